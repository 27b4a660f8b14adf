//! The filters of a list query, written only when given. `(?2 IS NULL OR status = ?2)` reads
//! well but is one statement for every filter shape, and neither SQLite nor a generic
//! PostgreSQL plan can turn it into an index range: a page deep in a shop's orders scanned all
//! the orders before it. Each shape written out is its own statement, with its own plan.

/// Conditions appended after a query's fixed ones, and the values they bind, in order.
pub struct Filters<'a> {
    pub sql: String,
    pub values: Vec<&'a str>,
    /// Which of the filters were given, in the order asked.
    pub given: Vec<bool>,
}

/// `filters` are `(condition, value)` pairs such as `("status =", Some("paid"))`; absent values
/// add nothing. Placeholders are numbered from `first`, marked with `mark` (`$` or `?`).
pub fn filters<'a>(filters: &[(&str, Option<&'a str>)], first: usize, mark: char) -> Filters<'a> {
    let mut sql = String::new();
    let mut values = Vec::new();
    for (condition, value) in filters {
        if let Some(v) = value {
            values.push(*v);
            sql.push_str(&format!(" AND {condition} {mark}{}", first + values.len() - 1));
        }
    }
    let given = filters.iter().map(|(_, v)| v.is_some()).collect();
    Filters { sql, values, given }
}

impl Filters<'_> {
    /// The placeholder number after the filters' own.
    pub fn next(&self, first: usize) -> usize {
        first + self.values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_given_filters_are_written_and_numbered_in_order() {
        let f = filters(&[("status =", None), ("id <", Some("x"))], 2, '$');
        assert_eq!((f.sql.as_str(), f.values.as_slice(), f.next(2)), (" AND id < $2", &["x"][..], 3));
        let f = filters(&[("status =", Some("paid")), ("id <", Some("x"))], 2, '?');
        assert_eq!((f.sql.as_str(), f.values.as_slice(), f.next(2)), (" AND status = ?2 AND id < ?3", &["paid", "x"][..], 4));
        let f = filters(&[("status =", None)], 2, '?');
        assert_eq!((f.sql.as_str(), f.next(2)), ("", 2));
    }
}
