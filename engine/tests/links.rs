//! Entity links against a real Postgres: a result applied late (a redelivery after a
//! newer one) does not undo the newer link of the same app id, and a link keeps the
//! account it was made in.

use chrono::{Duration, Utc};

use crmsync_engine::outbound::links::EntityLink;

#[tokio::test]
async fn an_older_result_applied_late_leaves_the_newer_link() {
    let (_, pool) = crmsync_testkit::migrated_database(&crmsync_projectors::MIGRATOR).await;
    let now = Utc::now();
    let link = |crm_id, account, at| EntityLink {
        workspace: "acme",
        entity_type: "contact",
        app_id: "c-42",
        provider: "zoho",
        crm_id,
        account,
        at,
    };
    let stored = || async {
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT crm_id, account_id FROM crm_entity_links
             WHERE workspace_id = 'acme' AND entity_type = 'contact' AND app_id = 'c-42'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    link("100", Some("org-1"), now).record(&pool).await.unwrap();
    link("200", Some("org-1"), now + Duration::seconds(5))
        .record(&pool)
        .await
        .unwrap();
    assert_eq!(stored().await, ("200".to_owned(), Some("org-1".to_owned())));
    // The first result again, redelivered after the second.
    link("100", Some("org-1"), now).record(&pool).await.unwrap();
    assert_eq!(stored().await, ("200".to_owned(), Some("org-1".to_owned())));
    // A newer one re-points it, in another account (the workspace reconnected).
    link("300", Some("org-2"), now + Duration::seconds(9))
        .record(&pool)
        .await
        .unwrap();
    assert_eq!(stored().await, ("300".to_owned(), Some("org-2".to_owned())));
}
