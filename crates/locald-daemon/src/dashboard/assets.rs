//! The page, embedded in the binary: no build step, nothing fetched from elsewhere.

pub(super) struct Asset {
    pub(super) content_type: &'static str,
    pub(super) body: &'static [u8],
}

pub(super) fn get(path: &str) -> Option<Asset> {
    let (content_type, body): (_, &'static str) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", include_str!("assets/index.html")),
        "/app.js" => ("text/javascript; charset=utf-8", include_str!("assets/app.js")),
        "/style.css" => ("text/css; charset=utf-8", include_str!("assets/style.css")),
        _ => return None,
    };
    Some(Asset { content_type, body: body.as_bytes() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_stays_small() {
        let total: usize =
            ["/", "/app.js", "/style.css"].iter().map(|p| super::get(p).unwrap().body.len()).sum();
        assert!(total < 100 << 10, "{total} bytes");
    }
}
