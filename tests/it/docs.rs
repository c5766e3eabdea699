//! The documents say what the code does: ARCHITECTURE.md names every module and the
//! defaults its Security section quotes; README.md's test command is the one CI runs.

use std::path::Path;

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
}

#[test]
fn architecture_names_every_module() {
    let lib = read("src/lib.rs");
    let architecture = read("ARCHITECTURE.md");
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .collect();
    assert!(modules.len() > 15, "{modules:?}");
    for m in modules {
        assert!(
            architecture.contains(&format!("src/{m}.rs"))
                || architecture.contains(&format!("src/{m}/")),
            "ARCHITECTURE.md's code map does not name src/{m}"
        );
        assert!(
            lib.contains(&format!("[`{m}`]")),
            "src/lib.rs's module map does not name {m}"
        );
    }
}

#[test]
fn the_security_section_quotes_the_defaults() {
    let architecture = read("ARCHITECTURE.md");
    let c = popgw::Config::default();
    let thousands = |n: usize| {
        let s = n.to_string();
        match s.len() {
            4..=6 => format!("{},{}", &s[..s.len() - 3], &s[s.len() - 3..]),
            _ => s,
        }
    };
    for quoted in [
        format!(
            "`tls.max_connections` ({})",
            thousands(c.tls.max_connections)
        ),
        format!("`tls.max_handshakes` ({})", thousands(c.tls.max_handshakes)),
        format!(
            "`limits.max_in_flight` ({})",
            thousands(c.limits.max_in_flight)
        ),
        format!(
            "`limits.max_operator_calls` ({})",
            c.limits.max_operator_calls
        ),
        format!(
            "`audit.append_timeout_ms` ({} s)",
            c.audit.append_timeout_ms / 1000
        ),
        format!(
            "handshakes time out after {} s",
            c.tls.handshake_timeout_ms / 1000
        ),
    ] {
        assert!(
            architecture.contains(&quoted),
            "ARCHITECTURE.md should say {quoted}"
        );
    }
}

#[test]
fn the_readme_test_command_is_what_ci_runs() {
    let readme = read("README.md");
    let ci = read(".ci/run");
    let command = readme
        .lines()
        .skip_while(|l| !l.starts_with("Run the tests"))
        .find_map(|l| l.strip_prefix("    "))
        .expect("README.md: a test command after \"Run the tests\"");
    assert!(
        ci.lines().any(|l| l.trim() == command.trim()),
        ".ci/run does not run {command:?}"
    );
}

/// The library's top-level modules (`src/X.rs` or `src/X/`) and the others each one's
/// code names (`crate::Y`, outside comments and test modules).
fn module_uses() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut uses = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        // The binary's commands and the generated code sit above the library's modules.
        if ["main", "lib", "cli", "proto"].contains(&top.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let entry = uses.entry(top.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top && name != "proto" {
                    entry.insert(name);
                }
            }
        }
    }
    uses
}

#[test]
fn no_import_cycle_between_the_librarys_modules() {
    let uses = module_uses();
    assert!(uses.len() > 15, "{uses:?}");
    assert!(uses["service"].contains("audit"), "the reader sees uses");
    // Depth-first search from every module; a module met again on the current path is a
    // cycle.
    fn visit<'a>(
        m: &'a str,
        uses: &'a std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut std::collections::BTreeSet<&'a str>,
    ) {
        if let Some(at) = path.iter().position(|p| *p == m) {
            panic!("import cycle: {} -> {m}", path[at..].join(" -> "));
        }
        if !done.insert(m) {
            return;
        }
        path.push(m);
        for next in uses.get(m).into_iter().flatten() {
            visit(next, uses, path, done);
        }
        path.pop();
    }
    let mut done = std::collections::BTreeSet::new();
    for m in uses.keys() {
        visit(m, &uses, &mut Vec::new(), &mut done);
    }
}
