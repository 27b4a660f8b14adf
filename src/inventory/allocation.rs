//! Dividing stock among orders that commit together. A group of orders reads its SKUs' rows
//! once, and this shelf hands out units in arrival order exactly as placing the orders one after
//! the other would: an order gets all its lines or nothing, and a refusal names every short SKU.
//! The store then writes one conditional update per SKU for what the shelf handed out.

use std::collections::BTreeMap;

use super::Stock;

/// Why an order got nothing: the SKUs it wanted more of than was left, in the order it named
/// them, and which of those had nothing left at all (the sold-out memory learns those).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    pub short: Vec<String>,
    pub sold_out: Vec<String>,
}

/// The group's view of its SKUs' stock rows, as read at the start of its transaction.
#[derive(Debug, Default)]
pub struct Shelf {
    rows: BTreeMap<String, Row>,
}

#[derive(Debug)]
struct Row {
    on_hand: i64,
    reserved: i64,
    taken: i64,
}

impl Row {
    fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }
}

impl Shelf {
    /// A SKU without a row has nothing available.
    pub fn new(rows: impl IntoIterator<Item = Stock>) -> Shelf {
        let rows = rows.into_iter().map(|s| (s.sku, Row { on_hand: s.on_hand, reserved: s.reserved, taken: 0 })).collect();
        Shelf { rows }
    }

    /// Reserves every `(sku, qty)` line of one order (SKUs distinct), or nothing. On success, the
    /// rows this order emptied, as they stand right after it (whoever remembers sold-out SKUs
    /// hears of those).
    pub fn take(&mut self, lines: &[(&str, i64)]) -> Result<Vec<Stock>, Shortage> {
        let fits = |sku: &str, qty: i64| self.rows.get(sku).is_some_and(|r| r.available() >= qty);
        let short: Vec<String> = lines.iter().filter(|(sku, qty)| !fits(sku, *qty)).map(|(sku, _)| (*sku).to_owned()).collect();
        if !short.is_empty() {
            let sold_out =
                short.iter().filter(|sku| self.rows.get(sku.as_str()).is_none_or(|r| r.available() <= 0)).cloned().collect();
            return Err(Shortage { short, sold_out });
        }
        let mut drained = Vec::new();
        for (sku, qty) in lines {
            let row = self.rows.get_mut(*sku).expect("checked above");
            row.reserved += qty;
            row.taken += qty;
            if row.available() == 0 {
                drained.push(Stock::new((*sku).to_owned(), row.on_hand, row.reserved));
            }
        }
        Ok(drained)
    }

    /// What the group took of each SKU, in SKU order (the order rows are locked in), leaving out
    /// SKUs nobody got.
    pub fn taken(&self) -> Vec<(&str, i64)> {
        self.rows.iter().filter(|(_, r)| r.taken > 0).map(|(sku, r)| (sku.as_str(), r.taken)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn shelf(rows: &[(&str, i64, i64)]) -> Shelf {
        Shelf::new(rows.iter().map(|(sku, on_hand, reserved)| Stock::new((*sku).into(), *on_hand, *reserved)))
    }

    #[test]
    fn an_order_takes_all_its_lines_or_nothing() {
        let mut s = shelf(&[("A", 5, 0), ("B", 1, 0)]);
        assert_eq!(s.take(&[("A", 2), ("B", 1)]).unwrap(), vec![Stock::new("B".into(), 1, 1)]);
        let refused = s.take(&[("A", 2), ("B", 1), ("C", 1)]).unwrap_err();
        assert_eq!(refused, Shortage { short: vec!["B".into(), "C".into()], sold_out: vec!["B".into(), "C".into()] });
        assert_eq!(s.take(&[("A", 4)]).unwrap_err(), Shortage { short: vec!["A".into()], sold_out: vec![] });
        assert_eq!(s.taken(), vec![("A", 2), ("B", 1)], "the refused orders took nothing");
        assert_eq!(s.take(&[("A", 3)]).unwrap(), vec![Stock::new("A".into(), 5, 5)]);
        assert_eq!(s.taken(), vec![("A", 5), ("B", 1)]);
    }

    #[test]
    fn reserved_units_count_against_what_is_available() {
        let mut s = shelf(&[("A", 5, 4)]);
        assert!(s.take(&[("A", 2)]).is_err());
        assert_eq!(s.take(&[("A", 1)]).unwrap().len(), 1);
    }

    fn orders() -> impl Strategy<Value = Vec<Vec<(usize, i64)>>> {
        prop::collection::vec(prop::collection::btree_map(0usize..4, 1i64..5, 1..4).prop_map(|m| m.into_iter().collect()), 0..30)
    }

    proptest! {
        /// Against the rule stated plainly: each order, in arrival order, gets its lines if every
        /// one fits in what is left, else nothing and the list of those that do not fit.
        #[test]
        fn the_shelf_gives_what_placing_one_by_one_gives(stock in prop::collection::vec(0i64..12, 4), orders in orders()) {
            let skus = ["A", "B", "C", "D"];
            let mut s = Shelf::new(skus.iter().zip(&stock).map(|(sku, n)| Stock::new((*sku).into(), *n, 0)));
            let mut left: HashMap<&str, i64> = skus.iter().copied().zip(stock.iter().copied()).collect();
            for order in orders {
                let lines: Vec<(&str, i64)> = order.iter().map(|(i, q)| (skus[*i], *q)).collect();
                let short: Vec<&str> = lines.iter().filter(|(sku, q)| left[sku] < *q).map(|(sku, _)| *sku).collect();
                match s.take(&lines) {
                    Ok(drained) => {
                        prop_assert!(short.is_empty());
                        for (sku, q) in &lines {
                            *left.get_mut(sku).unwrap() -= q;
                        }
                        let emptied: Vec<&str> = lines.iter().filter(|(sku, _)| left[sku] == 0).map(|(sku, _)| *sku).collect();
                        prop_assert_eq!(drained.iter().map(|d| d.sku.as_str()).collect::<Vec<_>>(), emptied);
                    }
                    Err(refusal) => {
                        prop_assert_eq!(&refusal.short, &short);
                        let sold_out: Vec<&str> = short.iter().copied().filter(|sku| left[sku] == 0).collect();
                        prop_assert_eq!(&refusal.sold_out, &sold_out);
                    }
                }
                prop_assert!(left.values().all(|n| *n >= 0));
            }
            for (sku, taken) in s.taken() {
                let i = skus.iter().position(|s| *s == sku).unwrap();
                prop_assert_eq!(stock[i] - taken, left[sku]);
            }
        }
    }
}
