//! The README's configuration snippets are real configuration: each YAML block loads.

use std::io::Write as _;

use wecom_gateway::config::Config;

#[test]
fn every_yaml_snippet_in_the_readme_loads() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```yaml") => current = Some(String::new()),
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
    // Alertmanager's own file is not ours.
    let ours: Vec<&String> = blocks
        .iter()
        .filter(|b| !b.starts_with("# alertmanager.yml"))
        .collect();
    assert!(ours.len() >= 6, "found {} snippets", ours.len());
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
    for block in ours {
        let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        f.write_all(block.as_bytes()).unwrap();
        let loaded = Config::load(Some(f.path()), env.clone());
        assert!(
            loaded.is_ok(),
            "README snippet does not load:\n{block}\n{}",
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
            "README snippet warns {warnings:?}:\n{block}"
        );
    }
}
