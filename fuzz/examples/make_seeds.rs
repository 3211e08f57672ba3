//! Writes the seed corpus to `fuzz/seeds/<target>/<name>`, replacing what
//! is there. Run it after a wire format or fixture changes:
//!
//! ```sh
//! cargo +nightly run --manifest-path fuzz/Cargo.toml --example make_seeds
//! ```

use std::path::Path;

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.parent().expect("fuzz/ lives in the repository");
    let out = fuzz.join("seeds");
    if out.exists() {
        std::fs::remove_dir_all(&out).expect("old seeds removed");
    }
    let seeds = mctc_fuzz::seeds::all(repo);
    for seed in &seeds {
        let dir = out.join(seed.target);
        std::fs::create_dir_all(&dir).expect("seed dir created");
        std::fs::write(dir.join(&seed.name), &seed.bytes).expect("seed written");
    }
    println!("{} seeds written to {}", seeds.len(), out.display());
}
