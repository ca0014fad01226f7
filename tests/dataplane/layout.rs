//! The layout of tests/ itself (docs/testenv.md): Cargo.toml lists the test binaries
//! (`autotests = false`), so a test file that no tier's root declares would be built by nothing
//! and never run. This fails instead, naming the file.

use std::collections::BTreeSet;
use std::path::Path;

/// The tiers: each is tests/TIER.rs, which declares the files of tests/TIER/.
const TIERS: [&str; 3] = ["dataplane", "kube", "gateway"];

fn names(dir: &Path, want_dirs: bool) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_dir() == want_dirs)
        .map(|path| {
            path.file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn every_test_file_is_declared_by_a_tier_that_cargo_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tests = root.join("tests");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("read Cargo.toml");

    let mut files: Vec<String> = TIERS.iter().map(|t| format!("{t}.rs")).collect();
    // Not a test: the controller benchmark, a [[bench]] that reuses the harness.
    files.push("controller_scale.rs".into());
    assert_eq!(
        names(&tests, false),
        files.iter().cloned().collect::<BTreeSet<_>>(),
        "tests/ holds only the tiers' root files: a file beside them is built by nothing; move it \
         into a tier's folder and declare it in that tier's root file"
    );
    let mut folders: Vec<String> = TIERS.iter().map(|t| (*t).to_owned()).collect();
    folders.push("support".into());
    assert_eq!(
        names(&tests, true),
        folders.into_iter().collect::<BTreeSet<_>>()
    );

    for tier in TIERS {
        assert!(
            manifest.contains(&format!(
                "[[test]]\nname = \"{tier}\"\npath = \"tests/{tier}.rs\"\n"
            )),
            "Cargo.toml builds the {tier} tier"
        );
        let declared = std::fs::read_to_string(tests.join(format!("{tier}.rs")))
            .expect("read the tier's root");
        for file in names(&tests.join(tier), false) {
            let module = file.strip_suffix(".rs").unwrap_or(&file);
            assert!(
                declared.contains(&format!("    mod {module};\n")),
                "tests/{tier}/{file} is not declared in tests/{tier}.rs, so it never runs"
            );
        }
    }
}
