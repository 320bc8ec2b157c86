//! Human output of the client subcommands: an answer's fields as aligned `field  value`
//! lines, lists one item a line; `--json` prints the answer as it came instead.

use std::fmt::Write;

use serde_json::Value;

/// `answer` for people.
pub fn human(answer: &Value) -> String {
    let mut out = String::new();
    match answer {
        Value::Object(fields) => {
            let width = fields.keys().map(String::len).max().unwrap_or(0);
            for (name, value) in fields {
                match value {
                    Value::Array(items) if items.iter().any(Value::is_object) => {
                        let _ = writeln!(out, "{name}:");
                        for item in items {
                            let _ = writeln!(out, "  - {}", inline(item));
                        }
                    }
                    _ => {
                        let _ = writeln!(out, "{name:<width$}  {}", inline(value));
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                let _ = writeln!(out, "{}", inline(item));
            }
        }
        other => {
            let _ = writeln!(out, "{}", inline(other));
        }
    }
    out
}

/// One value on one line: strings bare, objects as `name=value` pairs.
fn inline(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(text) => text.clone(),
        Value::Object(fields) => fields
            .iter()
            .map(|(name, value)| format!("{name}={}", inline(value)))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Array(items) if items.is_empty() => "-".to_string(),
        Value::Array(items) => items.iter().map(inline).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn answers_read_as_aligned_fields_and_one_item_a_line() {
        let shown = super::human(&json!({
            "hash": "ab12",
            "signatures": [{"public_key": "GABC", "hint": "01020304"}],
            "fee": 200,
            "unlocked": ["GA", "GB"],
            "pending": null,
            "unmatched": [],
        }));
        // Fields in name order (serde_json's map), one list item a line.
        assert_eq!(
            shown,
            "fee         200\nhash        ab12\npending     -\nsignatures:\n  - \
             hint=01020304 public_key=GABC\nunlocked    GA, GB\nunmatched   -\n"
        );
    }
}
