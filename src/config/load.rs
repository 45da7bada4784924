//! Loading: built-in defaults < config.yaml < `WECOM_CALLBACK_*` environment, layered by figment,
//! then read by the key definitions.
//!
//! Owns: where values may come from (a file named or in `WECOM_CALLBACK_CONFIG`, its Hermes
//! layout, the environment given) and how `__` nests an environment variable. Must never: parse
//! an environment value (`WECOM_CALLBACK_TOKEN=0123` stays the text "0123").

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Yaml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::build;
use super::keys::ENV_PREFIX;
use super::read::{At, Reader, ENV_SOURCE};
use super::types::{Config, ConfigErrors, Loaded};

/// Existing deployments keep the keys under this nesting; it is read as if it were the top level.
const NESTED_PATH: &str = "platforms.wecom_callback.extra";

impl Config {
    /// Load from an optional YAML file and the given environment (`(name, value)` pairs; the binary
    /// passes `std::env::vars()`, tests pass their own). The file path, if not given, comes from
    /// `WECOM_CALLBACK_CONFIG`. A missing file named explicitly is an error.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Loaded), ConfigErrors> {
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let file = file.map(Path::to_path_buf).or_else(|| {
            let path = env.get(&format!("{ENV_PREFIX}CONFIG"))?;
            Some(PathBuf::from(path)).filter(|_| !path.is_empty())
        });
        let in_file = |e: &dyn Display| match &file {
            Some(path) => format!("config file {}: {e}", path.display()),
            None => e.to_string(),
        };
        let mut figment = Figment::new();
        if let Some(path) = file.as_deref() {
            if !path.is_file() {
                let missing = in_file(&"not found or not a regular file");
                return Err(ConfigErrors(vec![missing]));
            }
            let yaml = Figment::from(Yaml::file_exact(path));
            figment = figment.merge(yaml.clone());
            if yaml.find_value(NESTED_PATH).is_ok() {
                figment = figment.merge(yaml.focus(NESTED_PATH));
            }
        }
        let figment = figment.merge(EnvVars::new(&env));
        let dict: Dict = (figment.extract())
            .map_err(|e| ConfigErrors(e.into_iter().map(|e| in_file(&e)).collect()))?;
        let mut reader = Reader::new(&figment, &env);
        let root = At {
            dict: &dict,
            prefix: String::new(),
        };
        let config = build::config(&mut reader, &root);
        let (mut errors, warnings) = (reader.errors, reader.warnings);
        match config {
            Some(config) if errors.is_empty() => Ok((
                config,
                Loaded {
                    config_file: file,
                    warnings,
                },
            )),
            _ => {
                errors.extend(warnings.iter().map(|w| format!("warning: {w}")));
                Err(ConfigErrors(errors))
            }
        }
    }
}

/// The `WECOM_CALLBACK_*` variables given to `load` as a figment provider: `__` nests
/// (`AGENT__KIND` is `agent.kind`) and values stay text. figment's own `Env` cannot do this: it
/// reads the process environment itself and parses values (the token "0123" would become 123).
struct EnvVars(Dict);

impl EnvVars {
    fn new(env: &BTreeMap<String, String>) -> Self {
        let vars = env.iter().filter_map(|(name, value)| {
            let key = name.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
            let var = figment::util::nest(&key.replace("__", "."), Value::from(value.clone()));
            var.into_dict().filter(|_| key != "config")
        });
        EnvVars(vars.fold(Dict::new(), |mut all, var| {
            merge(&mut all, var);
            all
        }))
    }
}

/// `WECOM_CALLBACK_AGENT__KIND` and `..._AGENT__URL` both land in the one `agent` section.
fn merge(into: &mut Dict, from: Dict) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Dict(_, section)), Value::Dict(_, more)) => merge(section, more),
            (_, value) => drop(into.insert(key, value)),
        }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        // Names a value's variable in errors: keys `agent`, `kind` are WECOM_CALLBACK_AGENT__KIND.
        Metadata::named(ENV_SOURCE).interpolater(|_, keys: &[&str]| {
            format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase())
        })
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Map::from([(Profile::Global, self.0.clone())]))
    }
}
