//! The README's excerpts are real code: every ```rust block (not `rust,ignore`) must appear,
//! line by line and in order, in one of the examples (`// ...` marks a cut), and every ```python
//! block in the Python publish functions of docs/redis-protocol/ (`# ...` marks a cut).

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
            files.push((path.display().to_string(), lines_of(&path)));
        }
    }
    files
}

/// The lines of `path`, without trailing spaces.
fn lines_of(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap();
    text.lines().map(|l| l.trim_end().to_owned()).collect()
}

/// Whether `block`'s pieces (separated by `cut` lines) appear in `file` in order, each piece
/// as consecutive lines.
fn contains(file: &[String], block: &[&str], cut: &str) -> bool {
    let mut from = 0;
    for piece in block.split(|l| l.trim() == cut) {
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

/// Checks that every README block fenced as ```{fence} is in one of `files` (`cut` marks a
/// cut); returns how many there were.
fn check_blocks(fence: &str, files: &[(String, Vec<String>)], cut: &str) -> usize {
    let readme = fs::read_to_string("README.md").unwrap();
    let opening = format!("```{fence}");
    let mut checked = 0;
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != opening {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        assert!(
            files.iter().any(|(_, file)| contains(file, &block, cut)),
            "this README block is not in any of {:?}:\n{}",
            files.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            block.join("\n")
        );
        checked += 1;
    }
    checked
}

#[test]
fn readme_excerpts_match_the_examples() {
    let checked = check_blocks("rust", &examples(), "// ...");
    assert!(checked >= 4, "only {checked} blocks checked");
}

#[test]
fn readme_python_is_the_publish_snippet() {
    let path = Path::new("docs/redis-protocol/publish.py");
    let files = [(path.display().to_string(), lines_of(path))];
    assert_eq!(check_blocks("python", &files, "# ..."), 1);
}
