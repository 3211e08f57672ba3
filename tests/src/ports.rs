use std::net::TcpListener;

/// A loopback TCP port that was free a moment ago. Callers that race with other
/// tests retry on "address in use".
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local addr").port()
}

/// Two consecutive free loopback ports `(p, p + 1)`: swtpm's TCTI finds the
/// control channel at the data port plus one.
pub fn free_port_pair() -> (u16, u16) {
    for _ in 0..200 {
        let first = TcpListener::bind(("127.0.0.1", 0)).expect("bind an ephemeral loopback port");
        let port = first.local_addr().expect("local addr").port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return (port, port + 1);
        }
    }
    panic!("no two consecutive free loopback ports after 200 tries");
}
