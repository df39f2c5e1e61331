//! `multipart/form-data` publish bodies (RFC 7578): the text fields of a form, in order. A file
//! part is refused: an upload belongs to the backend that handles it, and what goes to a group
//! is progress text or a reference to the file, never the file (the story's `group_send` of an
//! `UploadedFile` failed for exactly this reason).

use bytes::Bytes;

/// Why a form body cannot be published: the status (400 or 415) and a sentence.
pub type Refusal = (u16, String);

/// The `boundary` parameter of a `multipart/form-data` Content-Type.
pub fn boundary(content_type: &str) -> Result<String, Refusal> {
    content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or_else(|| {
            (
                400,
                "the multipart/form-data Content-Type has no boundary parameter (1 to 70 characters); let your HTTP client build the header".into(),
            )
        })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// A parameter of a Content-Disposition value (`name="x"`).
fn disposition_param<'a>(value: &'a str, key: &str) -> Option<&'a str> {
    value
        .split(';')
        .skip(1)
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// The form's text fields as `(name, value)`, in order.
///
/// # Errors
/// 415 for a file part (one with a filename, or a content type other than text), 400 for a
/// body that is not a well-formed form, a field without a name, or a value that is not UTF-8.
pub fn text_fields(boundary: &str, body: &Bytes) -> Result<Vec<(String, String)>, Refusal> {
    let bad = |why: &str| (400, format!("the multipart/form-data body {why}"));
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut at =
        find(body, delim, 0).ok_or_else(|| bad("has no part delimited by its boundary"))?;
    let mut fields = Vec::new();
    loop {
        at += delim.len();
        if body[at..].starts_with(b"--") {
            return Ok(fields);
        }
        if !body[at..].starts_with(b"\r\n") {
            return Err(bad("has a boundary line that does not end with CRLF"));
        }
        at += 2;
        let head_end = find(body, b"\r\n\r\n", at)
            .ok_or_else(|| bad("has a part without a blank line after its headers"))?;
        let head = std::str::from_utf8(&body[at..head_end])
            .map_err(|_| bad("has part headers that are not UTF-8"))?;
        let mut close = b"\r\n".to_vec();
        close.extend_from_slice(delim);
        let end = find(body, &close, head_end + 4)
            .ok_or_else(|| bad("ends before its closing boundary"))?;
        let content = &body[head_end + 4..end];
        let mut name = None;
        let mut filename = None;
        let mut ctype = None;
        for line in head.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let k = k.trim();
            if k.eq_ignore_ascii_case("content-disposition") {
                name = disposition_param(v, "name").map(str::to_string);
                filename = disposition_param(v, "filename").map(str::to_string);
            } else if k.eq_ignore_ascii_case("content-type") {
                ctype = Some(v.trim().to_ascii_lowercase());
            }
        }
        let name =
            name.ok_or_else(|| bad("has a part without a name in its Content-Disposition"))?;
        let is_text = ctype.as_deref().is_none_or(|t| t.starts_with("text/"));
        if filename.is_some() || !is_text {
            let what = match &filename {
                Some(f) => format!(
                    "a file part ({name:?}, file {f:?}, {} bytes)",
                    content.len()
                ),
                None => format!("a non-text part ({name:?}, {})", ctype.unwrap_or_default()),
            };
            return Err((
                415,
                format!(
                    "the form has {what}; wsgate publishes messages, not uploads: let the backend that received the upload keep it and publish progress text or a reference to it (a URL or an id) instead"
                ),
            ));
        }
        let value = std::str::from_utf8(content).map_err(|e| {
            bad(&format!(
                "has field {name:?} that is not UTF-8 (byte {})",
                e.valid_up_to()
            ))
        })?;
        fields.push((name, value.to_string()));
        at = end + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, &str)]) -> Bytes {
        let mut b = String::new();
        for (head, value) in parts {
            b.push_str("--XyZ\r\n");
            b.push_str(head);
            b.push_str("\r\n\r\n");
            b.push_str(value);
            b.push_str("\r\n");
        }
        b.push_str("--XyZ--\r\n");
        Bytes::from(b)
    }

    #[test]
    fn text_fields_come_out_in_order() {
        let body = form(&[
            (
                "Content-Disposition: form-data; name=\"a\"",
                "正在打开数据...",
            ),
            (
                "Content-Disposition: form-data; name=\"b\"\r\nContent-Type: text/plain; charset=utf-8",
                "row 2\r\nof 3",
            ),
        ]);
        assert_eq!(
            text_fields("XyZ", &body).unwrap(),
            vec![
                ("a".to_string(), "正在打开数据...".to_string()),
                ("b".to_string(), "row 2\r\nof 3".to_string())
            ]
        );
        assert_eq!(
            boundary("multipart/form-data; boundary=\"XyZ\"").unwrap(),
            "XyZ"
        );
        assert_eq!(boundary("multipart/form-data").unwrap_err().0, 400);
    }

    #[test]
    fn a_file_part_is_refused_with_415_and_what_to_do_instead() {
        let body = form(&[
            ("Content-Disposition: form-data; name=\"a\"", "x"),
            (
                "Content-Disposition: form-data; name=\"upload\"; filename=\"big.xlsx\"\r\nContent-Type: application/vnd.ms-excel",
                "PK..",
            ),
        ]);
        let (status, why) = text_fields("XyZ", &body).unwrap_err();
        assert_eq!(status, 415);
        assert!(why.contains("file \"big.xlsx\""), "{why}");
        assert!(
            why.contains("publish progress text or a reference"),
            "{why}"
        );
    }

    #[test]
    fn a_cut_off_form_is_a_400() {
        let body = Bytes::from_static(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end",
        );
        assert_eq!(text_fields("XyZ", &body).unwrap_err().0, 400);
    }
}
