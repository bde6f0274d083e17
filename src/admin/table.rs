//! Plain-text output for a terminal of 80 columns: aligned tables and wrapped sentences.

/// The width human output is laid out for.
pub const WIDTH: usize = 80;

/// Columns aligned on the widest cell (in characters), two spaces apart; the last column
/// is not padded, so no line ends in blanks.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        let cells: Vec<&str> = cells.collect();
        let last = cells.len().saturating_sub(1);
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            s.push_str(c);
            if i < last {
                let pad = w.saturating_sub(c.chars().count()) + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(&mut header.iter().copied());
    out.push('\n');
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
        out.push('\n');
    }
    out
}

/// `text` wrapped at `WIDTH` on spaces: the first line starts with `first`, the others
/// with `rest`. A word longer than a line is left whole.
pub fn wrap(text: &str, first: &str, rest: &str) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        let len = line.chars().count();
        if !empty && len + 1 + word.chars().count() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = rest.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// A xenbus state number in words (xen/io/xenbus.h `enum xenbus_state`).
pub fn xenbus_state(s: Option<&str>) -> String {
    let name = match s {
        None => return "-".into(),
        Some("0") => "Unknown",
        Some("1") => "Initialising",
        Some("2") => "InitWait",
        Some("3") => "Initialised",
        Some("4") => "Connected",
        Some("5") => "Closing",
        Some("6") => "Closed",
        Some("7") => "Reconfiguring",
        Some("8") => "Reconfigured",
        Some(other) => return other.to_string(),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_the_widest_cell_without_trailing_blanks() {
        let t = table(
            &["BACKEND", "MODE", "DEVICE"],
            &[
                vec![
                    "backend/vbd/5/51712".into(),
                    "w".into(),
                    "/dev/loop3".into(),
                ],
                vec!["backend/qdisk/12/768".into(), "r".into(), "-".into()],
            ],
        );
        assert_eq!(
            t,
            "BACKEND               MODE  DEVICE\n\
             backend/vbd/5/51712   w     /dev/loop3\n\
             backend/qdisk/12/768  r     -\n"
        );
        assert!(t.lines().all(|l| !l.ends_with(' ')));
        // Characters, not bytes.
        let t = table(&["A", "B"], &[vec!["é".into(), "x".into()]]);
        assert_eq!(t, "A  B\né  x\n");
    }

    #[test]
    fn sentences_wrap_at_80_columns_with_a_hanging_indent() {
        let text = "word ".repeat(40);
        let w = wrap(&text, "  kind  ", "        ");
        for l in w.lines() {
            assert!(l.chars().count() <= WIDTH, "{l:?}");
        }
        assert!(w.starts_with("  kind  word"));
        assert!(w.lines().skip(1).all(|l| l.starts_with("        word")));
        assert_eq!(w.split_whitespace().filter(|x| *x == "word").count(), 40);
        let long = "x".repeat(100);
        assert_eq!(wrap(&long, "", ""), format!("{long}\n"));
    }

    #[test]
    fn xenbus_states_in_words() {
        assert_eq!(xenbus_state(Some("4")), "Connected");
        assert_eq!(xenbus_state(Some("2")), "InitWait");
        assert_eq!(xenbus_state(None), "-");
        assert_eq!(xenbus_state(Some("x9")), "x9");
    }
}
