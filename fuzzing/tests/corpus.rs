//! Every input kept in `fuzz/corpus/<target>/` (seeds and what cargo fuzz found),
//! checked on stable as part of the test suite.

use std::path::Path;

#[test]
fn the_kept_corpus_passes_every_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, check) in crmsync_fuzzing::TARGETS {
        let dir = root.join(name);
        let mut inputs = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect::<Vec<_>>();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name} has no corpus");
        for input in &inputs {
            let data = std::fs::read(input).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{name} fails on {}", input.display());
        }
        eprintln!("{name}: {} inputs", inputs.len());
    }
}
