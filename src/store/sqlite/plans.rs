//! The list queries' plans on the embedded store: every filter shape of every page walks an
//! index in the order it serves, so a page deep in a shop's data costs what the first one does.

use rusqlite::Connection;

use crate::store::filters::{filters, Filters};

/// The plan's lines, as `EXPLAIN QUERY PLAN` words them.
fn plan(c: &Connection, sql: &str, values: usize) -> Vec<String> {
    let args: Vec<rusqlite::types::Value> = (0..values + 2).map(|_| rusqlite::types::Value::Text("x".into())).collect();
    let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3)).unwrap().map(Result::unwrap).collect()
}

/// Every shape of `filters` given and not, with the index its plan must search.
fn assert_indexed(c: &Connection, conditions: &[&str], sql: fn(&Filters) -> String, index: fn(&[bool]) -> &'static str) {
    for shape in 0..1u32 << conditions.len() {
        let given: Vec<bool> = (0..conditions.len()).map(|i| shape & (1 << i) != 0).collect();
        let pairs: Vec<(&str, Option<&str>)> = conditions.iter().zip(&given).map(|(cond, g)| (*cond, g.then_some("x"))).collect();
        let f = filters(&pairs, 2, '?');
        let text = sql(&f);
        let lines = plan(c, &text, f.values.len());
        let want = index(&given);
        // Each given filter bounds the search (`status=?`, `id<?`), not a scan behind it.
        let bounds: Vec<String> = pairs
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(cond, _)| format!("{}?", cond.trim_start_matches("d.").replace(' ', "")))
            .collect();
        assert!(
            lines.len() == 1
                && lines[0].starts_with("SEARCH")
                && lines[0].contains(want)
                && bounds.iter().all(|b| lines[0].contains(b.as_str())),
            "{text}\nshould be one search of {want} bounded by {bounds:?}, without a sort: {lines:?}"
        );
    }
}

#[test]
fn every_page_shape_searches_an_index_in_its_order() {
    let mut c = Connection::open_in_memory().unwrap();
    super::schema::migrate(&mut c).unwrap();
    assert_indexed(&c, &["status =", "id <"], super::orders::page_sql, |g| {
        if g[0] {
            "orders_by_shop_status"
        } else {
            "orders_by_shop"
        }
    });
    assert_indexed(&c, &["category =", "sku >"], super::catalog::page_sql, |g| {
        if g[0] {
            "products_by_category"
        } else {
            "PRIMARY KEY"
        }
    });
    assert_indexed(&c, &["d.status ="], super::webhooks::page_sql, |g| {
        if g[0] {
            "webhook_deliveries_by_hook_status"
        } else {
            "webhook_deliveries_by_hook "
        }
    });
}
