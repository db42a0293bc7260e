//! `.env` files: `KEY=value` lines, `#` comments, optional `export ` and quotes.

/// Pairs in file order, or the 1-based line of the first malformed line.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err((index + 1, format!("expected KEY=value, found {line:?}")));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((index + 1, format!("invalid variable name {key:?}")));
        }
        let value = value.trim();
        let value = strip_quotes(value, '"').or_else(|| strip_quotes(value, '\'')).unwrap_or(value);
        out.push((key.to_owned(), value.to_owned()));
    }
    Ok(out)
}

fn strip_quotes(value: &str, quote: char) -> Option<&str> {
    value.strip_prefix(quote)?.strip_suffix(quote)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_comments_export_and_quotes() {
        let pairs = super::parse("# c\nA=1\nexport B=\"two words\"\n\nC='x'\n").unwrap();
        assert_eq!(
            pairs,
            vec![("A".into(), "1".into()), ("B".into(), "two words".into()), ("C".into(), "x".into())]
        );
    }

    #[test]
    fn names_the_bad_line() {
        assert_eq!(super::parse("A=1\nnope\n").unwrap_err().0, 2);
    }
}
