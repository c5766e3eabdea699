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
