//! The README and docs/ tell the truth: each YAML snippet loads, the quick start's commands name
//! files that exist (or that an earlier step creates) and subcommands and flags the real binary
//! accepts, the callback URL the README gives is the one the gateway logs, and every link between
//! the files reaches a file and a heading that exist.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use tokio::process::Command;
use wecom_gateway::config::Config;

use crate::support::process::{gateway_env, Gateway, BIN};
use crate::support::FakeWecom;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// README.md and every docs/*.md, as (path relative to the repository, text).
fn documents() -> Vec<(String, String)> {
    let mut docs = vec![("README.md".to_owned(), read(&root().join("README.md")))];
    let mut names: Vec<String> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .collect();
    names.sort();
    for n in names {
        let rel = format!("docs/{n}");
        let text = read(&root().join(&rel));
        docs.push((rel, text));
    }
    docs
}

/// The fenced blocks of `text` opened with exactly "```{lang}".
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let open = format!("```{lang}");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l == open => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// The text of the `## {title}` section, up to the next `## ` heading.
fn section<'a>(text: &'a str, title: &str) -> &'a str {
    let start = text
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("no section {title:?}"));
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

#[test]
fn every_yaml_snippet_in_the_readme_and_docs_loads() {
    let env: Vec<(String, String)> = [
        ("WECOM_CALLBACK_CORP_ID", "ww1436e0e65a779aee"),
        ("WECOM_CALLBACK_CORP_SECRET", "secret"),
        ("WECOM_CALLBACK_AGENT_ID", "1000002"),
        ("WECOM_CALLBACK_TOKEN", "token"),
        (
            "WECOM_CALLBACK_ENCODING_AES_KEY",
            "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt",
        ),
        ("OPENAI_API_KEY", "sk-example"),
        ("WECOM_CALLBACK_ALLOWED_USERS", "zhangsan"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut checked = 0;
    for (name, text) in documents() {
        // Alertmanager's own file is not ours.
        for block in blocks(&text, "yaml")
            .into_iter()
            .filter(|b| !b.starts_with("# alertmanager.yml"))
        {
            let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
            f.write_all(block.as_bytes()).unwrap();
            let loaded = Config::load(Some(f.path()), env.clone());
            assert!(
                loaded.is_ok(),
                "{name}: snippet does not load:\n{block}\n{}",
                loaded.unwrap_err()
            );
            let (_, info) = loaded.unwrap();
            // A snippet shows where the reader's own value goes with the examples' placeholders
            // (`change-me`), which check-config rightly warns about; any other warning is a mistake.
            let placeholder = "still holds the example's placeholder";
            let warnings: Vec<&String> = (info.warnings.iter())
                .filter(|w| !w.contains(placeholder))
                .collect();
            assert!(
                warnings.is_empty(),
                "{name}: snippet warns {warnings:?}:\n{block}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "found {checked} snippets");
}

/// The quick start, followed in order from a fresh clone: a file a command reads exists in the
/// repository or was created by an earlier `cp`, the copied config loads, each subcommand and flag
/// is in the real binary's `--help`, and the service is run before it is played against.
#[tokio::test]
async fn quick_start_commands_work_from_a_fresh_clone() {
    let readme = read(&root().join("README.md"));
    let quick = section(&readme, "Quick start");
    let mut created: HashSet<String> = HashSet::new();
    let mut subcommands = Vec::new();
    let mut installs = 0;
    for block in blocks(quick, "sh") {
        for line in block.lines() {
            let line = line.split("  #").next().unwrap().trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["cp", from, to] => {
                    assert!(
                        root().join(from).is_file(),
                        "quick start copies {from}: no such file"
                    );
                    if to.ends_with(".yaml") {
                        let loaded = Config::load(Some(&root().join(from)), Vec::new());
                        assert!(loaded.is_ok(), "{from} does not load: {:?}", loaded.err());
                    }
                    created.insert(to.to_string());
                }
                ["cargo", "install", rest @ ..] => {
                    assert!(rest.contains(&"--locked"), "{line}: without --locked the binary is built from crate versions the tests never ran against");
                    installs += 1;
                }
                ["cargo", "run", "--release", "--", sub, args @ ..]
                | ["wecom-gateway", sub, args @ ..] => {
                    let help = Command::new(BIN)
                        .args([sub, "--help"])
                        .output()
                        .await
                        .unwrap();
                    assert!(help.status.success(), "{line}: `{sub}` is not a subcommand");
                    let help = String::from_utf8_lossy(&help.stdout).into_owned();
                    for (i, arg) in args.iter().enumerate() {
                        if arg.starts_with("--") {
                            assert!(
                                help.contains(&format!("{arg} ")),
                                "{line}: {sub} has no {arg}:\n{help}"
                            );
                        }
                        if *arg == "--config" {
                            let file = args[i + 1];
                            assert!(
                                created.contains(file) || root().join(file).is_file(),
                                "{line}: {file} is neither in the repository nor created by an earlier step"
                            );
                        }
                    }
                    subcommands.push(sub.to_string());
                }
                _ => {}
            }
        }
    }
    let serve = subcommands.iter().position(|s| s == "serve");
    let simulate = subcommands.iter().position(|s| s == "simulate");
    assert!(serve.is_some() && simulate.is_some(), "{subcommands:?}");
    assert!(serve < simulate, "run the service before playing a member");
    assert!(installs == 1, "the quick start says how to install, once");
    assert!(
        !quick.contains("cargo test"),
        "running the tests belongs under Development"
    );

    // The tests' command is one link away.
    assert!(readme.contains("(docs/development.md)"));
    let development = read(&root().join("docs/development.md"));
    assert!(blocks(&development, "sh")
        .iter()
        .any(|b| b.trim() == "cargo test"));
}

/// The URL line the README shows is the one the gateway logs at start-up (with the default port).
#[tokio::test]
async fn the_readme_gives_the_callback_url_the_gateway_logs() {
    let readme = read(&root().join("README.md"));
    let shown = readme
        .lines()
        .find(|l| l.starts_with("set the URL to "))
        .expect("the README shows the start-up line with the URL");
    assert!(
        shown.contains("http://<this server's public address>:8645/wecom/callback"),
        "{shown}"
    );
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve");
    gateway_env(&mut cmd, &fake.base_url(), dir.path());
    let gw = Gateway::start(&mut cmd).await;
    let port = gw.addr.rsplit(':').next().unwrap().to_owned();
    let log = gw.terminate().await;
    let expected = shown.replace(":8645/", &format!(":{port}/"));
    assert!(log.contains(&expected), "no {expected:?} in\n{log}");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> HashSet<String> {
    let mut fence = false;
    let mut out = HashSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
        }
        if !fence && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// Moved sections stay reachable: every relative link reaches a file, and its `#anchor` a heading.
#[test]
fn every_link_in_the_readme_and_docs_resolves() {
    let docs = documents();
    let mut links = 0;
    for (name, text) in &docs {
        let base = root().join(name);
        let dir = base.parent().unwrap();
        for piece in text.split("](").skip(1) {
            let target = &piece[..piece.find(')').unwrap_or(piece.len())];
            if target.contains("://")
                || target.starts_with("data:")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let (file, fragment) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target, None),
            };
            let path = if file.is_empty() {
                base.clone()
            } else {
                dir.join(file)
            };
            assert!(path.exists(), "{name}: link {target:?}: no such file");
            if let Some(a) = fragment {
                assert!(
                    anchors(&read(&path)).contains(a),
                    "{name}: link {target:?}: no such heading"
                );
            }
            links += 1;
        }
    }
    assert!(links >= 20, "found {links} links");
    // Every docs file is reachable from the README.
    let readme = &docs[0].1;
    for (name, _) in &docs[1..] {
        assert!(
            readme.contains(&format!("({name}")),
            "README does not link {name}"
        );
    }
}
