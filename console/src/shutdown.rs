//! The shutdown signal every task of the console waits on (passed in, as
//! in mini-redis: tests trigger their own).

use tokio::sync::watch;

/// Cloneable; [`Shutdown::wait`] returns once triggered or once the
/// trigger is dropped.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending side.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    /// Stops everything waiting on its [`Shutdown`]s.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

/// A new trigger and its signal.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Shutdown {
    /// Waits until triggered (or the trigger is dropped).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}
