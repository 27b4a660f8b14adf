//! The HTTP API assembled: every capability's routes with their OpenAPI spec, declared together,
//! and the edge every request passes first (`http::edge`: request id, trace context, RED
//! metrics, read-your-writes token, credentials, admission).

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Config;
use crate::http::auth;
use crate::http::edge::{self, Edge};
use crate::state::AppState;
use crate::{catalog, collections, events, health, ingest, inventory, orders, shops, telemetry};

#[derive(OpenApi)]
#[openapi(
    info(title = "vitrina", description = "A shop backend that survives sale day: catalog, stock and orders per shop, plus the seed (pymongo-api) routes."),
    modifiers(&Credentials),
    tags(
        (name = "seed", description = "The original pymongo-api contract, unchanged"),
        (name = "shops"), (name = "catalog"), (name = "inventory"), (name = "orders"), (name = "events"), (name = "ingest"), (name = "operations"))
)]
struct ApiDoc;

/// The credentials operations name in their `security`: `auth::gate` enforces these names.
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(what.to_owned())).build())
        };
        components.add_security_scheme(
            auth::ADMIN_SCHEME,
            bearer("The operator's admin token (`admin_token` in the configuration): creates and moves shops."),
        );
        components.add_security_scheme(
            auth::SHOP_KEY_SCHEME,
            bearer("A shop's API key, shown once when the shop is created: acts on that shop only."),
        );
    }
}

/// Every route with its spec. Split out so the spec can be produced without a server.
fn routes(config: &Config) -> OpenApiRouter<AppState> {
    let bounded = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(collections::routes::router())
        .merge(shops::routes::router())
        .merge(catalog::routes::router())
        .merge(inventory::routes::router())
        .merge(orders::routes::router())
        .merge(events::routes::router())
        .merge(events::webhook_routes::router())
        .merge(health::router())
        .merge(telemetry::http::router())
        .layer(DefaultBodyLimit::max(config.limits.json_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            edge::Bounds {
                request: Duration::from_secs(config.limits.request_timeout_secs.max(1)),
                body: Duration::from_secs(config.limits.body_read_timeout_secs.max(1)),
            },
            edge::bounded,
        ));
    // Feeds stream large bodies for as long as they take; they bound themselves.
    bounded.merge(ingest::routes::router())
}

/// What the document says of this server: its page bound, and examples from its demo data.
fn served(config: &Config) -> crate::http::openapi::Served<'static> {
    use crate::demo::{DEMO_SHOP, DEMO_SKU, HELLO_COLLECTION, HELLO_USER};
    const EXAMPLES: &[(&str, &str)] =
        &[("shop", DEMO_SHOP), ("sku", DEMO_SKU), ("collection_name", HELLO_COLLECTION), ("name", HELLO_USER)];
    crate::http::openapi::Served { page_max: config.limits.page_max, examples: EXAMPLES }
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let config = Config::default();
    crate::http::openapi::finish(routes(&config).into_openapi(), &served(&config))
}

/// The service: routes, spec, documentation and middleware, over `state`.
pub fn router(config: &Config, state: AppState) -> anyhow::Result<Router> {
    let (router, spec) = routes(config).split_for_parts();
    let spec = crate::http::openapi::finish(spec, &served(config));
    let guards = auth::Guards::from_spec(&spec)?;
    let router = router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
        .fallback(telemetry::http::not_found)
        .layer(Edge::layer(state.clone(), guards))
        .with_state(state);
    Ok(match crate::http::cors::layers(config)? {
        // Outside the edge: a preflight carries no credentials and takes no admission place;
        // the unit is stamped on the answers the CORS layer makes itself too.
        Some((cors, unit)) => router.layer(cors).layer(unit),
        None => router,
    })
}
