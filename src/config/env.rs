//! `WSGATE_<SECTION>__<KEY>` environment overrides, applied on top of the file's text before the
//! configuration is deserialized, so a bad value names its variable.

use serde::de::DeserializeOwned;

use super::validate::{Error, Problem, from_toml_error};

const ENV_SECTIONS: [&str; 10] = [
    "server",
    "websocket",
    "api",
    "proxy",
    "broker",
    "hub",
    "hooks",
    "jwt",
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
        // `WSGATE_SERVER__TLS__CERT` reaches `[server.tls] cert`: every further `__` nests.
        let mut path: Vec<&str> = vec![section.as_str()];
        path.extend(key.split("__"));
        let (last, tables) = path.split_last().expect("at least the section and a key");
        if !insert_at(&mut candidate, tables, last, env_value(raw)) {
            continue;
        }
        let dotted = path.join(".");
        match T::deserialize(toml::Value::Table(candidate.clone())) {
            Ok(_) => table = candidate,
            Err(e) => problems.push(Problem {
                origin: name.clone(),
                position: None,
                key: Some(dotted),
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

/// Sets `tables.../key = value`, creating the tables on the way; false when a step is not a
/// table.
fn insert_at(root: &mut toml::Table, tables: &[&str], key: &str, value: toml::Value) -> bool {
    match tables.split_first() {
        None => {
            root.insert(key.to_string(), value);
            true
        }
        Some((t, rest)) => match root
            .entry(t.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(next) => insert_at(next, rest, key, value),
            _ => false,
        },
    }
}
