//! Writes the seed corpus to `fuzz/seeds/<target>/<name>`.
//!
//! By default only seeds that are missing are written: seeds holding an
//! ECDSA signature (a fresh random nonce each time) would otherwise change
//! on every run. After a wire format or fixture change, rewrite them all:
//!
//! ```sh
//! cargo +nightly run --manifest-path fuzz/Cargo.toml --example make_seeds -- --replace
//! ```

use std::path::Path;

fn main() {
    let replace = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--replace") => true,
        Some(other) => {
            eprintln!("make_seeds: unknown argument `{other}` (only --replace)");
            std::process::exit(2);
        }
    };
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.parent().expect("fuzz/ lives in the repository");
    let out = fuzz.join("seeds");
    if replace && out.exists() {
        std::fs::remove_dir_all(&out).expect("old seeds removed");
    }
    let seeds = mctc_fuzz::seeds::all(repo);
    let mut written = 0;
    for seed in &seeds {
        let dir = out.join(seed.target);
        let path = dir.join(&seed.name);
        if path.exists() {
            continue;
        }
        std::fs::create_dir_all(&dir).expect("seed dir created");
        std::fs::write(&path, &seed.bytes).expect("seed written");
        written += 1;
    }
    println!(
        "{written} of {} seeds written to {}",
        seeds.len(),
        out.display()
    );
}
