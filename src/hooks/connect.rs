//! `on_connect`: before a client is let in, the backend hears who is knocking (path, query,
//! headers, cookies, peer) and decides: accept (with groups, user and info) or reject (with a
//! status and a reason the client sees in its close event).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Uri};
use serde_json::{Map, Value};

use super::answer::{self, Verdict};
use super::{HookError, Hooks, Repeat};

/// What the backend is told about a connecting client.
#[derive(Debug)]
pub struct Knock<'a> {
    /// Its id across nodes, the one later hooks and the API use.
    pub conn: &'a str,
    /// The route's pattern.
    pub route: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The path's placeholders and their values.
    pub params: &'a [(&'a str, String)],
    /// The group the route would join it to.
    pub group: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub peer: SocketAddr,
    /// The subprotocol selected (`wsgate.v1` or one of the route's), if any.
    pub protocol: Option<&'a str>,
}

impl Knock<'_> {
    /// The request body (PROTOCOL.md, "Backend hooks").
    pub fn json(&self) -> Value {
        let mut o = Map::new();
        o.insert("event".into(), "connect".into());
        o.insert("conn".into(), self.conn.into());
        o.insert("route".into(), self.route.into());
        o.insert("path".into(), self.path.into());
        o.insert("query".into(), self.query.unwrap_or("").into());
        let params: Map<String, Value> = self
            .params
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::from(v.as_str())))
            .collect();
        o.insert("params".into(), params.into());
        o.insert("group".into(), self.group.map_or(Value::Null, Value::from));
        let mut headers = Map::new();
        let mut cookies = Map::new();
        for (name, value) in self.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            if name == http::header::COOKIE {
                for pair in value.split(';') {
                    if let Some((k, v)) = pair.split_once('=') {
                        cookies.insert(k.trim().to_string(), v.trim().trim_matches('"').into());
                    }
                }
                continue;
            }
            match headers.get_mut(name.as_str()) {
                // Repeated fields join as one, the way RFC 9110 §5.3 allows.
                Some(Value::String(s)) => {
                    s.push_str(", ");
                    s.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_string(), value.into_owned().into());
                }
            }
        }
        o.insert("headers".into(), headers.into());
        o.insert("cookies".into(), cookies.into());
        o.insert("remote_addr".into(), self.peer.to_string().into());
        o.insert(
            "protocol".into(),
            self.protocol.map_or(Value::Null, Value::from),
        );
        Value::Object(o)
    }
}

impl Hooks {
    /// Asks the backend at `url` whether the client may come in.
    ///
    /// # Errors
    /// The backend could not be reached, did not answer in time, or answered something that
    /// is not a verdict.
    pub async fn on_connect(&self, url: &Uri, knock: &Knock<'_>) -> Result<Verdict, HookError> {
        let body = Bytes::from(knock.json().to_string());
        let v = self.call(url, body, Repeat::Harmless).await?;
        answer::verdict(v, self.max_groups, self.max_group_bytes).map_err(|why| {
            HookError::BadAnswer {
                url: url.to_string(),
                why,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_knock_carries_cookies_apart_and_repeated_headers_joined() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "sessionid=abc; csrftoken=\"x\"".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
        let params = [("room", "123".to_string())];
        let k = Knock {
            conn: "1.7",
            route: "/room/{room}/",
            path: "/room/123/",
            query: Some("a=1"),
            params: &params,
            group: Some("room:123"),
            headers: &h,
            peer: "127.0.0.1:5000".parse().unwrap(),
            protocol: None,
        };
        let v = k.json();
        assert_eq!(v["cookies"]["sessionid"], "abc");
        assert_eq!(v["cookies"]["csrftoken"], "x");
        assert!(v["headers"].get("cookie").is_none());
        assert_eq!(v["headers"]["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
        assert_eq!(v["params"]["room"], "123");
        assert_eq!(v["query"], "a=1");
        assert_eq!(v["event"], "connect");
    }
}
