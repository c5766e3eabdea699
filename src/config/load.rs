//! Reading a configuration file: TOML parsed key by key, so that every bad key is
//! named at once, then checked ([`Config::problems`]).

use std::path::Path;

use super::{Config, ConfigError};

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |problems: Vec<String>| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        };
        let (config, mut problems) = Self::parse(&text);
        let Some(config) = config else {
            return Err(invalid(problems));
        };
        problems.extend(config.problems());
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        Ok(config)
    }
    /// Parses a configuration, section by section, so that one mistake does not hide
    /// the next: every problem found, each named by its key's path.
    fn parse(text: &str) -> (Option<Config>, Vec<String>) {
        /// Deserializes `table` key by key, naming each bad key; the good ones are kept.
        fn keyed<T: serde::de::DeserializeOwned + Default>(
            table: toml::Table,
            prefix: &str,
            problems: &mut Vec<String>,
        ) -> T {
            let mut good = toml::Table::new();
            for (key, value) in table {
                let mut one = toml::Table::new();
                one.insert(key.clone(), value.clone());
                match toml::Value::Table(one).try_into::<T>() {
                    Ok(_) => {
                        good.insert(key, value);
                    }
                    Err(e) => problems.push(format!("{prefix}{key}: {}", e.message())),
                }
            }
            toml::Value::Table(good).try_into().unwrap_or_default()
        }
        fn section<T: serde::de::DeserializeOwned + Default>(
            table: &mut toml::Table,
            name: &str,
            problems: &mut Vec<String>,
        ) -> T {
            match table.remove(name) {
                None => T::default(),
                Some(toml::Value::Table(inner)) => keyed(inner, &format!("{name}."), problems),
                Some(_) => {
                    problems.push(format!("{name}: must be a [{name}] section"));
                    T::default()
                }
            }
        }
        let mut table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => return (None, vec![e.to_string()]),
        };
        let mut problems = Vec::new();
        let tls = section(&mut table, "tls", &mut problems);
        let registry = section(&mut table, "registry", &mut problems);
        let cache = section(&mut table, "cache", &mut problems);
        let limits = section(&mut table, "limits", &mut problems);
        let audit = section(&mut table, "audit", &mut problems);
        let admin = section(&mut table, "admin", &mut problems);
        let log = section(&mut table, "log", &mut problems);
        let top: Config = keyed(table, "", &mut problems);
        let config = Config {
            tls,
            registry,
            cache,
            limits,
            audit,
            admin,
            log,
            ..top
        };
        (Some(config), problems)
    }
}
