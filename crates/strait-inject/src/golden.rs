//! Golden files for tests: compared with what the code produces, rewritten with
//! `REFRESH_GOLDEN=1`.

use std::path::Path;

/// Compares `actual` with `testdata/<rel>`, or writes it there under `REFRESH_GOLDEN=1`.
pub fn check(rel: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel);
    if std::env::var_os("REFRESH_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (REFRESH_GOLDEN=1 writes it)", path.display()));
    if actual != expected {
        panic!(
            "{} differs (REFRESH_GOLDEN=1 rewrites it; review the diff)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}
