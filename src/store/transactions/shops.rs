//! Creating a shop.

use super::Rows;
use crate::events::envelope::shop_created;
use crate::shops::{NewShop, Shop};
use crate::store::{micros, StoreError, StoreResult};

/// The rows of shops.
#[allow(async_fn_in_trait)]
pub trait ShopRows: Rows {
    /// Adds the shop unless its id is taken; whether it was added.
    async fn insert_shop(&self, shop: &NewShop) -> StoreResult<bool>;
}

pub async fn create(rows: &impl ShopRows, new: &NewShop) -> StoreResult<Shop> {
    if !rows.insert_shop(new).await? {
        return Err(StoreError::conflict("shop_exists", format!("shop {} already exists", new.id)));
    }
    // Stored to the microsecond: the answer matches what a later read returns.
    let shop = Shop { id: new.id.clone(), name: new.name.clone(), currency: new.currency, created_at: micros(new.created_at) };
    rows.emit(shop_created(&shop), new.created_at).await?;
    Ok(shop)
}
