//! The property the fuzz target (`fuzz/`) and the property test check on the configuration
//! loader. Not a stable API: for fuzzing and tests only.

use crate::config::{Config, ENV_OVERRIDES};
use std::path::Path;

/// On any text: the config loader gives a configuration or an error naming the problems,
/// never a panic; a loaded configuration can be validated and routed. The bytes after a NUL,
/// if any, are the value of each overriding environment variable in turn.
pub fn config(data: &[u8]) {
    let (text, env_value) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let mut envs = vec![Vec::new()];
    if let Some(v) = env_value.and_then(|v| std::str::from_utf8(v).ok()) {
        envs.extend(
            ENV_OVERRIDES
                .iter()
                .map(|(name, _)| vec![(*name, v.to_string())]),
        );
    }
    for env in envs {
        if let Ok(cfg) = Config::from_toml_with_env(text, Path::new("fuzz.toml"), &env) {
            let problems = cfg.problems();
            if problems.is_empty() {
                let _ = crate::Router::new(&cfg);
            }
        }
    }
}
