-- The history of each Channel that standalone mode serves (in a cluster it is the Channel's
-- status.history): the Bundles it served as its stable bundle, the caller's JSON.
CREATE TABLE channel_histories (
    namespace TEXT   NOT NULL,
    name      TEXT   NOT NULL,
    history   TEXT   NOT NULL,
    at_ms     BIGINT NOT NULL,
    PRIMARY KEY (namespace, name)
);
