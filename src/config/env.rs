//! `WSGATE_<SECTION>__<KEY>` environment overrides, applied on top of the file's text before the
//! configuration is deserialized, so a bad value names its variable.

use serde::de::DeserializeOwned;

use super::validate::{Error, Problem, from_toml_error};

const ENV_SECTIONS: [&str; 8] = [
    "server",
    "websocket",
    "api",
    "proxy",
    "broker",
    "hub",
    "admin",
    "log",
];

/// Turns an environment value into TOML: numbers and booleans as such, anything else a string.
fn env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
            ) => v,
            Some(v @ toml::Value::Array(_)) => v,
            _ => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Applies `WSGATE_<SECTION>__<KEY>=value` overrides on top of the file text.
pub(super) fn apply_env<T: DeserializeOwned>(
    cfg: &mut T,
    origin: &str,
    text: &str,
    env: &[(String, String)],
) -> Result<(), Error> {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("WSGATE_") && k.contains("__"))
        .collect();
    if vars.is_empty() {
        return Ok(());
    }
    vars.sort();
    let mut table: toml::Table = toml::from_str(text).map_err(|e| Error {
        problems: vec![from_toml_error(origin, text, &e)],
    })?;
    let mut problems = Vec::new();
    for (name, raw) in vars {
        let rest = &name["WSGATE_".len()..];
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        if !ENV_SECTIONS.contains(&section.as_str()) {
            problems.push(Problem::plain(
                name.clone(),
                format!(
                    "unknown section {section:?}; environment overrides exist for {}",
                    ENV_SECTIONS.join(", ")
                ),
            ));
            continue;
        }
        let mut candidate = table.clone();
        let entry = candidate
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(sec) = entry else {
            continue;
        };
        sec.insert(key.clone(), env_value(raw));
        match T::deserialize(toml::Value::Table(candidate.clone())) {
            Ok(_) => table = candidate,
            Err(e) => problems.push(Problem {
                origin: name.clone(),
                position: None,
                key: Some(format!("{section}.{key}")),
                message: e.message().trim().to_string(),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(Error { problems });
    }
    *cfg = T::deserialize(toml::Value::Table(table)).map_err(|e| Error {
        problems: vec![Problem::plain(origin.to_string(), e.message().to_string())],
    })?;
    Ok(())
}
