//! The README's framework excerpts are real code: every ```rust block (not `rust,ignore`)
//! must appear, line by line and in order, in one of the examples (`// ...` marks a cut).

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Every `.rs` file under `examples/`, its folders too (the demo is one).
fn examples() -> Vec<(String, Vec<String>)> {
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::from("examples")];
    while let Some(dir) = dirs.pop() {
        files.extend(rust_files(&dir, &mut dirs));
    }
    files
}

/// The `.rs` files in `dir`, with their lines; its folders go to `dirs`.
fn rust_files(dir: &Path, dirs: &mut Vec<PathBuf>) -> Vec<(String, Vec<String>)> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            dirs.push(path);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).unwrap();
            let lines = text.lines().map(|l| l.trim_end().to_owned()).collect();
            files.push((path.display().to_string(), lines));
        }
    }
    files
}

/// Whether `block`'s pieces (separated by `// ...` lines) appear in `file` in order, each piece
/// as consecutive lines.
fn contains(file: &[String], block: &[&str]) -> bool {
    let mut from = 0;
    for piece in block.split(|l| l.trim() == "// ...") {
        if piece.is_empty() {
            continue;
        }
        let found = (from..file.len().saturating_sub(piece.len() - 1))
            .find(|&i| piece.iter().zip(&file[i..]).all(|(a, b)| a.trim_end() == b));
        match found {
            Some(i) => from = i + piece.len(),
            None => return false,
        }
    }
    true
}

#[test]
fn readme_excerpts_match_the_examples() {
    let readme = fs::read_to_string("README.md").unwrap();
    let examples = examples();
    let mut checked = 0;
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```rust" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        assert!(
            examples.iter().any(|(_, file)| contains(file, &block)),
            "this README block is not in any example:\n{}",
            block.join("\n")
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} blocks checked");
}
