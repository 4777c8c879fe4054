//! Reading what a Prometheus endpoint served: the sum of a metric's samples whose labels
//! include given pairs.

/// The sum of the samples of `name` (e.g. `edgehub_messages_sent_total`) whose labels
/// include every pair of `labels`; 0 if there is none.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let end = r.rfind('}')?;
                    (&r[..end], r[end + 1..].trim())
                }
                None if rest.starts_with(' ') => ("", rest.trim()),
                None => return None,
            };
            let all = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.split(' ').next()?.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_matching_samples_only() {
        let text = "# HELP x_total X.\n\
                    x_total{to=\"a\",id=\"1\"} 2\n\
                    x_total{to=\"a\",id=\"2\"} 3\n\
                    x_total{to=\"b\",id=\"1\"} 5\n\
                    x_total_other 7\n\
                    y 1.5\n";
        assert_eq!(sum(text, "x_total", &[("to", "a")]), 5.0);
        assert_eq!(sum(text, "x_total", &[]), 10.0);
        assert_eq!(sum(text, "x_total", &[("to", "c")]), 0.0);
        assert_eq!(sum(text, "y", &[]), 1.5);
    }
}
