//! `consume --format`: kcat's tokens, so people's habits carry over.
//!
//! `%t` topic, `%p` partition, `%o` offset, `%k` key, `%s` value, `%T` timestamp (ms),
//! `%h` headers (`name=value`, comma-separated), `%%` a percent sign, `\n` newline,
//! `\t` tab, `\\` backslash. Anything else is printed as is.

use flumen_protocol::record::RecordView;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Text(String),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Headers,
}

/// A parsed format string.
#[derive(Debug, Clone)]
pub(super) struct Format {
    tokens: Vec<Token>,
}

impl Format {
    pub fn parse(format: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        let mut text = String::new();
        let mut chars = format.chars();
        while let Some(character) = chars.next() {
            let token = match (character, chars.clone().next()) {
                ('%', Some(code)) => {
                    chars.next();
                    match code {
                        't' => Token::Topic,
                        'p' => Token::Partition,
                        'o' => Token::Offset,
                        'k' => Token::Key,
                        's' => Token::Value,
                        'T' => Token::Timestamp,
                        'h' => Token::Headers,
                        '%' => Token::Text("%".into()),
                        other => return Err(format!("unknown format token %{other}")),
                    }
                }
                ('\\', Some(code @ ('n' | 't' | '\\'))) => {
                    chars.next();
                    Token::Text(
                        match code {
                            'n' => "\n",
                            't' => "\t",
                            _ => "\\",
                        }
                        .into(),
                    )
                }
                (other, _) => {
                    text.push(other);
                    continue;
                }
            };
            if !text.is_empty() {
                tokens.push(Token::Text(std::mem::take(&mut text)));
            }
            tokens.push(token);
        }
        if !text.is_empty() {
            tokens.push(Token::Text(text));
        }
        Ok(Self { tokens })
    }

    /// Writes one record.
    pub fn render(&self, out: &mut Vec<u8>, topic: &str, partition: u32, record: &RecordView<'_>) {
        for token in &self.tokens {
            match token {
                Token::Text(text) => out.extend_from_slice(text.as_bytes()),
                Token::Topic => out.extend_from_slice(topic.as_bytes()),
                Token::Partition => out.extend_from_slice(partition.to_string().as_bytes()),
                Token::Offset => out.extend_from_slice(record.offset().to_string().as_bytes()),
                Token::Key => out.extend_from_slice(record.key().unwrap_or_default()),
                Token::Value => out.extend_from_slice(record.value().unwrap_or_default()),
                Token::Timestamp => {
                    out.extend_from_slice(record.timestamp_ms().to_string().as_bytes())
                }
                Token::Headers => {
                    for (index, (name, value)) in record.headers().enumerate() {
                        if index > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(name.as_bytes());
                        out.push(b'=');
                        out.extend_from_slice(value);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flumen_protocol::record::{BatchBuilder, BatchView};

    #[test]
    fn renders_kcat_tokens() {
        let mut builder = BatchBuilder::new(0);
        builder.push(1_234, Some(b"k1"), Some(b"v1"), &[("a", b"1"), ("b", b"2")]);
        let batch = builder.build().unwrap();
        let view = BatchView::validate(batch.as_bytes()).unwrap();
        let record = view.records().next().unwrap();
        let format = Format::parse(r"%t/%p@%o %k=%s %T [%h] 100%%\t.\n").unwrap();
        let mut out = Vec::new();
        format.render(&mut out, "orders", 3, &record);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "orders/3@0 k1=v1 1234 [a=1,b=2] 100%\t.\n"
        );
        assert!(Format::parse("%x").is_err());
    }
}
