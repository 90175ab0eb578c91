-- Entity numbers: 7 digits, the first is the type prefix 1..9, the other six random.
--
-- Engine (docs/DESIGN.md has the reasoning and the measurements):
--  * Shards. Each type's 1 000 000 numbers are split by a secret keyed permutation
--    (entity_ranges.shard_key) into 200 shards of 5 000 numbers spread over the whole range.
--    A transaction issues only from shards it holds: it locks them with FOR NO KEY UPDATE
--    SKIP LOCKED, chosen at random weighted by their free numbers, and keeps them to its end.
--    So no issuer waits for another, and an insert into a held shard never meets another
--    transaction's uncommitted number. A transaction keeps using the shards it holds for
--    its later calls.
--  * Card sharing. A holder holds only the numbers it took: when the shards nobody holds
--    cannot supply a call, it takes cards of the decks of shards other open transactions
--    hold (FOR UPDATE SKIP LOCKED on the cards), counted in entity_steals; every deal
--    locks its cards the same way and passes over those others took, topping up from
--    elsewhere. Only then does a call wait: it locks the remaining shards in shard order,
--    deals waiting for cards others are taking, and decides on committed state (ID005).
--  * Counts. entity_shards.issued counts a shard's committed numbers. Taking a shard
--    makes the transaction its holder (entity_shards.holder), which queues a deferred
--    constraint trigger; at commit it counts the transaction's rows in entity_numbers
--    (issued_xid) into its shards. So a call writes no counter row, a column DEFAULT never
--    updates a row per inserted row, and no app can misstate a count. entity_capacity sums
--    the shards and the committed steal rows (numbers taken from decks of shards another
--    transaction held; the next taker of the shard folds them into `issued` in the
--    statements that take it). How many numbers a transaction took from each shard is
--    also kept as a hint in a transaction-local setting, read by its own later calls only.
--  * Within a shard: random members with an index probe while it keeps 1 250 free (at
--    most 4 probes per number); then a deck of its free numbers, built once (bounded by
--    the shard: 5 000 probes); a call deals a uniformly random subset of the cards, drawn
--    afresh each time, so there is no cursor or stored order a rollback could reveal.
--  * Spares: a run of gen_entity_number calls (a column DEFAULT) draws batches from the
--    shard it holds and hands them out one per call; see _entity_spares_remove.
--  * Numbers come out in draw order (random). Claims take the number's own shard (and
--    wait if another open transaction holds it), or, in a deck shard another open
--    transaction holds, only the number's card (waiting only while another transaction is
--    taking that very number): see _claim_entity_number; un-issues put numbers back
--    (a stolen one without taking its shard).
-- Randomness: gen_random_uuid() (the server's strong random source; setseed() and
-- random() play no part). Each uuid yields six independent uniform 20-bit values; values
-- outside the wanted range are rejected, so every draw is exactly uniform.

-- About m uniform random integers in [0, 2^20), from the strong random source: each
-- gen_random_uuid() gives 122 random bits, of which six disjoint 20-bit groups are used
-- (the version nibble of byte 6 and the variant bits of byte 8 are skipped).
CREATE FUNCTION idmint._random_draws(m integer) RETURNS SETOF integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- PL/pgSQL rather than SQL: its plan is cached (a SQL function is planned per call).
    RETURN QUERY
    SELECT unnest(ARRAY[
        (get_byte(u.b, 0) << 12) | (get_byte(u.b, 1) << 4) | (get_byte(u.b, 2) >> 4),
        ((get_byte(u.b, 2) & 15) << 16) | (get_byte(u.b, 3) << 8) | get_byte(u.b, 4),
        (get_byte(u.b, 9) << 12) | (get_byte(u.b, 10) << 4) | (get_byte(u.b, 11) >> 4),
        ((get_byte(u.b, 11) & 15) << 16) | (get_byte(u.b, 12) << 8) | get_byte(u.b, 13),
        (get_byte(u.b, 5) << 12) | (get_byte(u.b, 7) << 4) | (get_byte(u.b, 6) & 15),
        ((get_byte(u.b, 8) & 63) << 14) | (get_byte(u.b, 14) << 6) | (get_byte(u.b, 15) >> 2)])
    -- OFFSET 0 keeps the subquery apart: pulled up, every use of b would call
    -- gen_random_uuid() again (18 uuids for six values instead of one).
    FROM (SELECT uuid_send(gen_random_uuid()) AS b FROM generate_series(1, (m + 5) / 6) OFFSET 0) AS u;
END
$$;
COMMENT ON FUNCTION idmint._random_draws(integer) IS
    'About m (a multiple of 6 >= m) independent uniform integers in [0, 2^20) from gen_random_uuid()';

-- The prefix of a registered type given as a one-digit text or a name; NULL otherwise.
CREATE FUNCTION idmint._find_entity(entity text) RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.prefix FROM idmint.entity_ranges r
    WHERE CASE WHEN entity ~ '^[0-9]$' THEN r.prefix = entity::integer ELSE r.name = entity END
$$;
COMMENT ON FUNCTION idmint._find_entity(text) IS
    'Prefix of the registered type named by a one-digit text or a type name; NULL if none (never raises)';

CREATE FUNCTION idmint._entity_prefix(entity integer) RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF entity IS NULL THEN
        PERFORM idmint._error('invalid_argument', 'entity must not be NULL',
                              'pass a type prefix 1..9 or a type name such as ''part''');
    ELSIF entity NOT BETWEEN 1 AND 9 THEN
        PERFORM idmint._error('invalid_argument', format('entity prefix %s is out of range', entity),
                              'entity type prefixes are 1..9');
    ELSIF NOT EXISTS (SELECT FROM idmint.entity_ranges r WHERE r.prefix = entity) THEN
        PERFORM idmint._error('unknown_entity_type', format('entity prefix %s is not a registered type', entity),
                              'see idmint.entity_types, or register it with idmint.add_entity_type');
    END IF;
    RETURN entity;
END
$$;
COMMENT ON FUNCTION idmint._entity_prefix(integer) IS
    'The prefix itself if it is a registered type; ID003 NULL or outside 1..9, ID008 unregistered';

CREATE FUNCTION idmint._entity_prefix(entity text) RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found integer;
BEGIN
    IF entity IS NULL OR entity = '' THEN
        PERFORM idmint._error('invalid_argument', 'entity must not be NULL or empty',
                              'pass a type prefix 1..9 or a type name such as ''part''');
    ELSIF entity ~ '^[0-9]$' THEN
        RETURN idmint._entity_prefix(entity::integer);
    END IF;
    found := idmint._find_entity(entity);
    IF found IS NULL THEN
        PERFORM idmint._error('unknown_entity_type',
            format('unknown entity type %L', left(entity, 100)),
            'type names are case-sensitive; see idmint.entity_types, or register it with idmint.add_entity_type');
    END IF;
    RETURN found;
END
$$;
COMMENT ON FUNCTION idmint._entity_prefix(text) IS
    'Resolve an entity given as a one-digit text or a type name to its prefix; ID003 NULL/empty/0, ID008 unknown';

-- Probes of entity_numbers are written as correlated scalar subqueries, `(SELECT true ...)
-- IS NULL`: unlike NOT EXISTS they cannot become a hash anti-join over the whole table.

-- The secret partition: a Feistel permutation of the 6-digit part v, as the pair
-- (v / 1000, v % 1000), in six rounds (l, r) -> (r, (l + F_i(r)) % 1000) with
-- F_i(x) = hashint4extended(x, key[i]) & 1023 (key: entity_ranges.shard_key). Its image
-- (l, r) puts v in shard r / 5 (the half the last round wrote, so every seed counts), at
-- index (r % 5) * 1000 + l of that shard (0..4999):
--   shard of v:       six rounds forward, shard = r / 5
--   member i of s:    from (i % 1000, 5 * s + i / 1000) six rounds back,
--                     (l, r) -> ((r + 2000 - F_i(l)) % 1000, l), v = l * 1000 + r
-- A shard's members are spread over the whole range with no structure to solve from the
-- numbers an app got (a keyed permutation, unlike a sum of table entries; but see
-- docs/DESIGN.md on claims). The two functions below are the definition; the per-number
-- fast path (_issue_entity_number), the spares' batches (_entity_draw_spares) and the
-- view entity_capacity inline the same rounds: a pinned call there costs more than the
-- rest of the work. (OFFSET 0 after the third and the sixth round: substituted into the
-- next, the rounds grew to 32 hash calls for 6; a step per round cost more than it saved.
-- No Memoize: it recomputed the first step as its cache key.)

-- The shard of each of `numbers` (7-digit, any registered types), by its type's key.
CREATE FUNCTION idmint._entity_shards_of(numbers integer[])
RETURNS TABLE (number integer, prefix integer, shard integer)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
-- (PL/pgSQL keeps the plan; a SQL function was planned at every call, 0.7 ms)
SET plan_cache_mode = force_generic_plan
-- (a Memoize over the second step recomputed the first as its cache key: 4 µs a number)
SET enable_memoize = off
AS $$
BEGIN
    RETURN QUERY
    SELECT x.n, r.prefix, f6.r / 5
    FROM unnest(numbers) AS x(n)
    JOIN idmint.entity_ranges r ON r.prefix = x.n / 1000000,
         LATERAL (SELECT x.n % 1000000 / 1000 AS l, x.n % 1000 AS r) f0,
         LATERAL (SELECT f0.r AS l, (f0.l + (hashint4extended(f0.r, r.shard_key[1]) & 1023)::integer) % 1000 AS r) f1,
         LATERAL (SELECT f1.r AS l, (f1.l + (hashint4extended(f1.r, r.shard_key[2]) & 1023)::integer) % 1000 AS r) f2,
         LATERAL (SELECT f2.r AS l, (f2.l + (hashint4extended(f2.r, r.shard_key[3]) & 1023)::integer) % 1000 AS r OFFSET 0) f3,
         LATERAL (SELECT f3.r AS l, (f3.l + (hashint4extended(f3.r, r.shard_key[4]) & 1023)::integer) % 1000 AS r) f4,
         LATERAL (SELECT f4.r AS l, (f4.l + (hashint4extended(f4.r, r.shard_key[5]) & 1023)::integer) % 1000 AS r) f5,
         LATERAL (SELECT f5.r AS l, (f5.l + (hashint4extended(f5.r, r.shard_key[6]) & 1023)::integer) % 1000 AS r OFFSET 0) f6;
END
$$;
COMMENT ON FUNCTION idmint._entity_shards_of(integer[]) IS
    'The shard of each entity number, by the secret partition of its type (numbers of unknown types are left out)';

-- The members of a shard at the given indexes (0..4999), as 6-digit parts, with the
-- position of each index in `idx` (ord).
CREATE FUNCTION idmint._entity_members(key bigint[], shard integer, idx integer[])
RETURNS TABLE (ord bigint, v integer)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_memoize = off
AS $$
BEGIN
    RETURN QUERY
    SELECT x.o, f0.l * 1000 + f0.r
    FROM unnest(idx) WITH ORDINALITY AS x(i, o),
         LATERAL (SELECT x.i % 1000 AS l, 5 * shard + x.i / 1000 AS r) f6,
         LATERAL (SELECT (f6.r + 2000 - (hashint4extended(f6.l, key[6]) & 1023)::integer) % 1000 AS l, f6.l AS r) f5,
         LATERAL (SELECT (f5.r + 2000 - (hashint4extended(f5.l, key[5]) & 1023)::integer) % 1000 AS l, f5.l AS r) f4,
         LATERAL (SELECT (f4.r + 2000 - (hashint4extended(f4.l, key[4]) & 1023)::integer) % 1000 AS l, f4.l AS r OFFSET 0) f3,
         LATERAL (SELECT (f3.r + 2000 - (hashint4extended(f3.l, key[3]) & 1023)::integer) % 1000 AS l, f3.l AS r) f2,
         LATERAL (SELECT (f2.r + 2000 - (hashint4extended(f2.l, key[2]) & 1023)::integer) % 1000 AS l, f2.l AS r) f1,
         LATERAL (SELECT (f1.r + 2000 - (hashint4extended(f1.l, key[1]) & 1023)::integer) % 1000 AS l, f1.l AS r OFFSET 0) f0;
END
$$;
COMMENT ON FUNCTION idmint._entity_members(bigint[], integer, integer[]) IS
    'Members of a shard of the secret partition with this key, at the given indexes (0..4999)';

-- A transaction's shards of a type. What it holds is in entity_shards (holder = its xid,
-- with the row lock): only idmint writes there, so the shards an issuer inserts into and
-- whether they have a deck can never be misstated. How many numbers it issued from each
-- is a hint kept in the transaction-local setting idmint.entity_<prefix>, rows
-- {shard, issued (committed, when taken), mine (issued since), deck (0/1)}, the most
-- recently taken last; set_config(..., true) ends with the transaction and is undone by a
-- rolled-back savepoint, like the rows it describes. An app can overwrite the hint
-- (SET LOCAL): that misleads only its own calls (a wrong plan, at worst ID005 for itself),
-- never the committed counts, which the commit-time count takes from the rows themselves.

-- Build a shard's deck: its free numbers (bounded: 5 000 probes and at most 1 250 cards,
-- once per shard). `expected` is the free
-- count the shard state says; a mismatch is an internal inconsistency, never ignored.
-- `taken`: the shard held no number before the calling statement took exactly the members
-- with these indexes (the caller knows: it took the empty shard itself), so the free ones
-- are the other members: no probes, and only their members are computed.
CREATE FUNCTION idmint._entity_build_deck(prefix integer, shard integer, key bigint[], expected integer,
                                          taken integer[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    base constant integer := prefix * 1000000;
    got integer;
BEGIN
    INSERT INTO idmint.entity_free (prefix, shard, number)
    SELECT _entity_build_deck.prefix, _entity_build_deck.shard, m.number
    FROM (SELECT base + x.v AS number
          FROM idmint._entity_members(key, _entity_build_deck.shard, ARRAY(
                   -- (NOT IN a subquery: a hashed subplan; a join on the array became a nested loop.)
                   SELECT q FROM generate_series(0, 4999) AS q
                   WHERE taken IS NULL OR q NOT IN (SELECT unnest(taken)))) x) m
    WHERE taken IS NOT NULL OR (SELECT true FROM idmint.entity_numbers y WHERE y.number = m.number) IS NULL;
    GET DIAGNOSTICS got = ROW_COUNT;
    IF got <> expected THEN
        PERFORM idmint._error('entity_range_exhausted',
            format('entity type %s: shard %s has %s free numbers, its count says %s', prefix, shard, got, expected));
    END IF;
END
$$;
COMMENT ON FUNCTION idmint._entity_build_deck(integer, integer, bigint[], integer, integer[]) IS
    'Build the deck of a shard (its free numbers); ID005 if the count disagrees';

-- How many numbers this transaction holds in a shard (its rows; few for a fresh one).
-- Taking a shard whose commit-time count already ran in this transaction (after SET
-- CONSTRAINTS ALL IMMEDIATE, or when issuing from a commit-time trigger) takes those
-- rows back out of `issued`, so that the next count can add all of them again: a
-- transaction's count needs no memory of an earlier one. The callers only ask when the
-- transaction has issued something and is not the shard's holder.
CREATE FUNCTION idmint._entity_mine(prefix integer, shard integer) RETURNS integer
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*)::integer
    FROM idmint._entity_shards_of(ARRAY(
             SELECT e.number FROM idmint.entity_numbers e
             WHERE e.issued_xid = pg_current_xact_id()
               -- (not a range: a bitmap AND with the key index read a whole type when the
               -- table had no statistics yet, 0.1 s a call)
               AND e.number / 1000000 = _entity_mine.prefix)) x
    WHERE x.shard = _entity_mine.shard
$$;
COMMENT ON FUNCTION idmint._entity_mine(integer, integer) IS
    'The numbers this transaction issued in a shard (its rows)';

-- Fold the steal rows of deck shards this transaction has just taken (see entity_steals;
-- a shard without a deck has none): each leaves, and exactly the rows deleted (the
-- DELETE's own result, whatever the snapshot) go into `issued`. Other transactions'
-- committed rows move into the count; this transaction's own ones leave too and their
-- numbers come back into `issued` here, because the take has just taken all of its rows
-- in the shard out of it (`_entity_mine`; its commit-time count adds them all). Only
-- called right after such a take (the holder's row lock held), and only when the take
-- saw steal rows of a shard it took: this transaction's own ones always show, and others'
-- rows committed since may stay for the next taker (a shard's committed count is
-- `issued` plus its steal rows wherever it is read), so a take pays no fold statement
-- while nobody shares cards. `taken`: hint rows {shard, issued, mine, deck}; returned
-- with issued after the fold.
CREATE FUNCTION idmint._entity_fold(p integer, taken integer[]) RETURNS integer[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    now_issued integer;
BEGIN
    FOR j IN 1 .. coalesce(array_length(taken, 1), 0) LOOP
        CONTINUE WHEN taken[j][4] = 0;
        WITH d AS (
            DELETE FROM idmint.entity_steals t WHERE t.prefix = p AND t.shard = taken[j][1]
            RETURNING t.n
        )
        UPDATE idmint.entity_shards x SET issued = x.issued + (SELECT sum(d.n) FROM d)::integer
        WHERE x.prefix = p AND x.shard = taken[j][1] AND EXISTS (SELECT FROM d)
        RETURNING x.issued INTO now_issued;
        IF FOUND THEN
            taken[j][2] := now_issued;
        END IF;
    END LOOP;
    RETURN taken;
END
$$;
COMMENT ON FUNCTION idmint._entity_fold(integer, integer[]) IS
    'Move the steal rows of deck shards just taken into their issued counts (exactly the rows deleted); the hint rows with issued after the fold';

-- Take one shard of a type with a free number (not in `held`), picked with probability
-- proportional to its free numbers, whether it still has sparse room or deals from a
-- deck, so that every free number is as likely to come next: 24 random
-- (shard, u) pairs from the strong source, the first shard with u * 5 000 < free that
-- nobody holds (FOR NO KEY UPDATE SKIP LOCKED: never waits) -- 24 index probes instead of
-- reading, weighting and sorting all 200 shard rows. This transaction becomes its holder
-- in the same statement (which queues its commit-time count; the caller has said SET
-- CONSTRAINTS ... DEFERRED). `maybe_mine`: the transaction may have issued numbers
-- already (then those of a shard it counted already come back out of issued, see
-- _entity_mine). Returns its hint row {{shard, issued, mine, deck}} (issued without this
-- transaction's rows, mine: those rows), or NULL when no draw qualified (likely only when
-- the type is nearly full): then the caller's full weighted pick.
-- Under REPEATABLE READ or SERIALIZABLE, locking a shard that another transaction counted
-- into after this snapshot raises 40001: _entity_take_weighted takes the shard instead,
-- passing over such shards one by one. READ COMMITTED never pays for that.
CREATE FUNCTION idmint._entity_take_one(prefix integer, held integer[], maybe_mine boolean) RETURNS integer[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    taken integer[];
    stolen boolean;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN idmint._entity_take_weighted(prefix, held, 0, 1, maybe_mine);
    END IF;
    WITH c AS MATERIALIZED (
        SELECT (v % 200)::smallint AS shard, w, i
        FROM (SELECT (get_byte(u.b, o) << 8 | get_byte(u.b, o + 1)) AS v,
                     (get_byte(u.b, o + 9) << 8 | get_byte(u.b, o + 10)) AS w,
                     row_number() OVER () AS i
              FROM (SELECT uuid_send(gen_random_uuid()) AS b FROM generate_series(1, 8) OFFSET 0) u,
                    unnest('{0,2,4}'::integer[]) AS o) d
        WHERE v < 65400
    ), z AS (
        -- (= ANY: one index scan for the 24 shards; a join read all 200 rows.)
        SELECT x.prefix, x.shard, x.issued, k.c FROM idmint.entity_shards x JOIN c ON c.shard = x.shard
        -- (The committed count: issued plus the shard's committed steal rows, see
        -- entity_steals; only a shard with a deck can have any.)
        CROSS JOIN LATERAL (SELECT x.issued + CASE WHEN x.deck THEN (SELECT coalesce(sum(t.n), 0) FROM idmint.entity_steals t
                                                                 WHERE t.prefix = x.prefix AND t.shard = x.shard)::integer
                                              ELSE 0 END AS c) k
        WHERE x.prefix = _entity_take_one.prefix AND x.shard = ANY (ARRAY(SELECT c.shard FROM c))
          AND k.c < 5000 AND x.shard <> ALL (held)
          AND c.w::bigint * 5000 < 65536 * (5000 - k.c)
        ORDER BY c.i
        LIMIT 1
        FOR NO KEY UPDATE OF x SKIP LOCKED
    ), a AS (
        UPDATE idmint.entity_shards x
        SET holder = pg_current_xact_id(),
            issued = x.issued - CASE WHEN maybe_mine AND x.holder IS DISTINCT FROM pg_current_xact_id()
                                     THEN idmint._entity_mine(x.prefix, x.shard) ELSE 0 END
        FROM z
        WHERE x.prefix = z.prefix AND x.shard = z.shard
        RETURNING x.shard, x.issued, z.issued - x.issued AS mine, x.deck, z.c > z.issued AS stolen
    )
    SELECT array_agg(ARRAY[a.shard::integer, a.issued, a.mine, a.deck::integer]), bool_or(a.stolen)
    INTO taken, stolen FROM a;
    IF stolen THEN
        RETURN idmint._entity_fold(prefix, taken);
    END IF;
    RETURN taken;
END
$$;
COMMENT ON FUNCTION idmint._entity_take_one(integer, integer[], boolean) IS
    'Take (hold) one unheld shard with a free number, weighted by free numbers, without waiting; its hint row, or NULL';

-- Take (hold) up to kk unheld shards of a type with more than `lim` free numbers, not in
-- `held`, in a random order weighted by their free numbers: Efraimidis-Spirakis keys
-- ln(u) / free (u from the strong source); LIMIT counts only the rows this call could lock
-- (SKIP LOCKED passes over those others hold, never waiting). One 20-bit draw per shard,
-- matched by shard number: 34 uuids, not 200. `has_rows` as `maybe_mine` above. Returns
-- their hint rows {{shard, issued, mine, deck}} (as _entity_take_one), by key, or NULL.
-- Under REPEATABLE READ or SERIALIZABLE a shard counted into after the snapshot makes the
-- statement fail with 40001: then the candidates are taken one by one in the same weighted
-- order, each in a subtransaction, and those that raise 40001 are passed over.
-- SERIALIZABLE's own 40001 (read/write dependencies, its DETAIL an untranslated "Reason
-- code: ...") is raised at once instead: it fails every candidate alike, and passing over
-- all 200 led into the waiting phase.
CREATE FUNCTION idmint._entity_take_weighted(prefix integer, held integer[], lim integer, kk integer,
                                             has_rows boolean, guarded boolean DEFAULT false)
RETURNS integer[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p constant integer := _entity_take_weighted.prefix;
    me constant xid8 := pg_current_xact_id();
    taken integer[];
    one integer[];
    stolen boolean;
    c record;
    detail text;
    hint text;
BEGIN
    IF NOT guarded AND current_setting('transaction_isolation') <> 'read committed' THEN
        BEGIN
            RETURN idmint._entity_take_weighted(p, held, lim, kk, has_rows, true);
        EXCEPTION WHEN serialization_failure THEN
            GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
            -- SERIALIZABLE's read/write dependencies: no shard would do (see below)
            IF detail LIKE 'Reason code:%' THEN
                RAISE EXCEPTION USING ERRCODE = 'serialization_failure', MESSAGE = SQLERRM, DETAIL = detail, HINT = hint;
            END IF;
            NULL;  -- one of them was counted into after this snapshot
        END;
        FOR c IN
            SELECT x.shard FROM idmint.entity_shards x
            JOIN idmint._random_draws(200) WITH ORDINALITY AS d(v, i) ON d.i = x.shard + 1
            WHERE x.prefix = p AND x.issued < 5000 - lim AND x.shard <> ALL (held)
            ORDER BY ln((d.v + 0.5) / 1048576.0) / (5000 - x.issued) DESC
        LOOP
            EXIT WHEN array_length(taken, 1) >= kk;
            BEGIN
                -- This candidate alone (every other shard counts as held).
                one := idmint._entity_take_weighted(
                    p, ARRAY(SELECT g FROM generate_series(0, 199) AS g WHERE g <> c.shard), lim, 1, has_rows, true);
                IF one IS NOT NULL THEN
                    taken := coalesce(taken, '{}') || one;
                END IF;
            EXCEPTION WHEN serialization_failure THEN
                GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
                -- see above
                IF detail LIKE 'Reason code:%' THEN
                    RAISE EXCEPTION USING ERRCODE = 'serialization_failure', MESSAGE = SQLERRM, DETAIL = detail, HINT = hint;
                END IF;
                NULL;  -- counted into after this snapshot: pass over it
            END;
        END LOOP;
        RETURN taken;
    END IF;
    WITH z AS (
        SELECT x.prefix, x.shard, x.issued, k.c, ln((d.v + 0.5) / 1048576.0) / (5000 - k.c) AS w
        FROM idmint.entity_shards x
        -- (The committed count: issued plus the shard's committed steal rows, see
        -- entity_steals; only a shard with a deck can have any.)
        CROSS JOIN LATERAL (SELECT x.issued + CASE WHEN x.deck THEN (SELECT coalesce(sum(t.n), 0) FROM idmint.entity_steals t
                                                                 WHERE t.prefix = x.prefix AND t.shard = x.shard)::integer
                                              ELSE 0 END AS c) k
        JOIN idmint._random_draws(200) WITH ORDINALITY AS d(v, i) ON d.i = x.shard + 1
        WHERE x.prefix = p AND k.c < 5000 - lim AND x.shard <> ALL (held)
        ORDER BY 5 DESC
        LIMIT kk
        FOR NO KEY UPDATE OF x SKIP LOCKED
    ), a AS (
        UPDATE idmint.entity_shards x
        SET holder = me,
            issued = x.issued - CASE WHEN x.holder IS DISTINCT FROM me AND has_rows
                                     THEN idmint._entity_mine(p, x.shard) ELSE 0 END
        FROM z
        WHERE x.prefix = z.prefix AND x.shard = z.shard
        RETURNING x.shard, x.issued, z.issued - x.issued AS mine, x.deck, z.w, z.c > z.issued AS stolen
    )
    SELECT array_agg(ARRAY[a.shard::integer, a.issued, a.mine, a.deck::integer] ORDER BY a.w DESC), bool_or(a.stolen)
    INTO taken, stolen FROM a;
    IF stolen THEN
        RETURN idmint._entity_fold(p, taken);
    END IF;
    RETURN taken;
END
$$;
COMMENT ON FUNCTION idmint._entity_take_weighted(integer, integer[], integer, integer, boolean, boolean) IS
    'Take (hold) up to kk unheld shards with more than lim free numbers, in a random order weighted by free numbers, without waiting; their hint rows, or NULL';

-- Deal up to k cards of a shard's deck: a uniformly random k-subset in random order (a
-- fresh uuid per card from the strong source; at most 1 250 cards). Every free number of
-- the shard is equally likely, and each deal is drawn anew, so a rolled-back deal tells
-- nothing about the next one. The cards are locked (FOR UPDATE): cards that another
-- transaction is taking (it stole or claimed them, see entity_steals) are passed over
-- (SKIP LOCKED), or, when `wait` (phase 6 of the allocator), waited for: they may come
-- back. Fewer than k cards is no error here: the caller tops up. Under REPEATABLE READ or
-- SERIALIZABLE a card taken and committed after the snapshot raises 40001: then the cards
-- are locked one by one and such cards passed over. A deadlock while waiting: ID005 (`n`
-- for the message), as the allocator's own wait.
CREATE FUNCTION idmint._entity_deal(p integer, s integer, k integer, wait boolean, n integer)
RETURNS integer[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    got integer[];
    c record;
    detail text;
    hint text;
BEGIN
    IF NOT wait AND current_setting('transaction_isolation') = 'read committed' THEN
        SELECT array_agg(z.number ORDER BY z.u) INTO got
        FROM (SELECT f.number, gen_random_uuid() AS u FROM idmint.entity_free f
              WHERE f.prefix = p AND f.shard = s
              ORDER BY 2 LIMIT k FOR UPDATE OF f SKIP LOCKED) z;
        RETURN coalesce(got, '{}');
    END IF;
    BEGIN
        BEGIN
            IF wait THEN
                SELECT array_agg(z.number ORDER BY z.u) INTO got
                FROM (SELECT f.number, gen_random_uuid() AS u FROM idmint.entity_free f
                      WHERE f.prefix = p AND f.shard = s
                      ORDER BY 2 LIMIT k FOR UPDATE OF f) z;
            ELSE
                SELECT array_agg(z.number ORDER BY z.u) INTO got
                FROM (SELECT f.number, gen_random_uuid() AS u FROM idmint.entity_free f
                      WHERE f.prefix = p AND f.shard = s
                      ORDER BY 2 LIMIT k FOR UPDATE OF f SKIP LOCKED) z;
            END IF;
        EXCEPTION WHEN serialization_failure THEN
            GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
            -- as in _entity_take_weighted
            IF detail LIKE 'Reason code:%' THEN
                RAISE EXCEPTION USING ERRCODE = 'serialization_failure', MESSAGE = SQLERRM, DETAIL = detail, HINT = hint;
            END IF;
            got := '{}';
            FOR c IN SELECT f.number FROM idmint.entity_free f WHERE f.prefix = p AND f.shard = s
                     ORDER BY gen_random_uuid() LOOP
                EXIT WHEN cardinality(got) >= k;
                BEGIN
                    IF wait THEN
                        PERFORM FROM idmint.entity_free f
                        WHERE f.prefix = p AND f.shard = s AND f.number = c.number FOR UPDATE;
                    ELSE
                        PERFORM FROM idmint.entity_free f
                        WHERE f.prefix = p AND f.shard = s AND f.number = c.number FOR UPDATE SKIP LOCKED;
                    END IF;
                    IF FOUND THEN
                        got := got || c.number;
                    END IF;
                EXCEPTION WHEN serialization_failure THEN
                    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
                    -- as above
                    IF detail LIKE 'Reason code:%' THEN
                        RAISE EXCEPTION USING ERRCODE = 'serialization_failure', MESSAGE = SQLERRM, DETAIL = detail, HINT = hint;
                    END IF;
                    NULL;  -- taken and committed after this snapshot
                END;
            END LOOP;
        END;
    EXCEPTION WHEN deadlock_detected THEN
        PERFORM idmint._error('entity_range_exhausted',
            format('entity type %s (%s): fewer than %s free numbers are not held by open transactions, '
                   'and a transaction taking the rest is waiting for this one',
                   p, (SELECT r.name FROM idmint.entity_ranges r WHERE r.prefix = p), n),
            'ask for fewer, or retry once the other transactions have ended');
    END;
    RETURN coalesce(got, '{}');
END
$$;
COMMENT ON FUNCTION idmint._entity_deal(integer, integer, integer, boolean, integer) IS
    'Deal up to k uniformly random cards of a shard''s deck, locked; passing over (or, wait, waiting for) cards others are taking';

-- Spares: a run of column DEFAULTs (gen_entity_number) in one transaction draws its
-- numbers in batches from the shard it holds, one INSERT per batch, and hands them out one
-- per call from the transaction-local setting idmint.entity_spare_<prefix> (7 digits per
-- number, no separator). They are this transaction's rows (issued, how = 'gen', unbound)
-- in a shard only it inserts into, so nobody else can take them; set_config(..., true) is
-- undone with the transaction or a rolled-back savepoint, exactly like those rows. What
-- was not handed out is un-issued before the commit-time count (_entity_flush) and before
-- any other call of the type (_issue_entity_numbers), so counts, capacity and ID005 see
-- only numbers handed out. A claim or a binding of a spare takes it off the list.
-- A rolled-back savepoint restores the list, so the numbers handed out inside it would
-- come out again. So every hand-out and every new list sets the unlogged sequence
-- idmint.entity_handouts to a new mark (setval: no WAL, and lastval() stays the app's)
-- and keeps the mark in idmint.entity_mark; the session-local currval survives a
-- rollback. Lists are used only while the two agree; otherwise (after such a savepoint,
-- or DISCARD SEQUENCES) the transaction issues one number per call for the rest of its
-- life, and the lists' numbers are un-issued like any spare.
-- An app that rewrites these settings misleads only its own calls: it could already write
-- any value into its own rows, or un-issue its numbers by rolling back a savepoint.

-- Take numbers off this transaction's spare list of a type: those in `which` (NULL: all).
-- Returns those of them that are still its unbound generated rows.
CREATE FUNCTION idmint._entity_spares_remove(p integer, which integer[]) RETURNS integer[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    name constant text := 'idmint.entity_spare_' || p;
    spare constant text := current_setting(name, true);
    listed integer[];
    taken integer[];
    ignored text;
BEGIN
    IF spare IS NULL OR spare = '' THEN
        RETURN '{}';
    ELSIF cardinality(which) = 1 AND strpos(spare, which[1]::text) = 0 THEN
        RETURN '{}';  -- (the trigger binding a DEFAULT's number: no parse per row)
    END IF;
    listed := CASE WHEN spare ~ '^([1-9][0-9]{6})+$'
                   THEN ARRAY(SELECT substr(spare, 7 * i + 1, 7)::integer FROM generate_series(0, length(spare) / 7 - 1) AS i)
                   ELSE '{}' END;
    taken := CASE WHEN which IS NULL THEN listed ELSE ARRAY(SELECT x FROM unnest(listed) AS x WHERE x = ANY (which)) END;
    IF taken = '{}' AND listed <> '{}' THEN
        RETURN '{}';
    END IF;
    ignored := set_config(name, array_to_string(ARRAY(SELECT x FROM unnest(listed) WITH ORDINALITY AS u(x, o)
                                                      WHERE x <> ALL (taken) ORDER BY o), ''), true);
    RETURN ARRAY(SELECT e.number FROM idmint.entity_numbers e
                 WHERE e.number = ANY (taken) AND e.issued_xid = pg_current_xact_id()
                   AND e.how = 'gen' AND e.bound_at IS NULL);
END
$$;
COMMENT ON FUNCTION idmint._entity_spares_remove(integer, integer[]) IS
    'Take numbers (NULL: all) off this transaction''s spare list of a type; returns those still its unbound generated rows';

-- Give back every spare of this transaction (all types): un-issued, lists emptied.
CREATE FUNCTION idmint._entity_spares_drop() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ignored text;
BEGIN
    ignored := set_config('idmint.entity_spares', '', true);
    FOR q IN 1 .. 9 LOOP
        PERFORM idmint._unissue_entity_numbers(idmint._entity_spares_remove(q, NULL));
    END LOOP;
END
$$;
COMMENT ON FUNCTION idmint._entity_spares_drop() IS
    'Un-issue every spare number of this transaction (all types) and empty the spare lists';

-- A batch for the spares: up to k random free members of shard s (held by this
-- transaction, without a deck), inserted as issued by this transaction; returned in draw
-- order. As the fast path of _issue_entity_number (which checks the same in the table),
-- but from 20-bit draws (values under 1 000 000 keep v % 5 000 uniform), probed first
-- and inserted in number order like the general path: ON CONFLICT made each row a
-- speculative insertion, half again the cost of a row. Nobody else inserts into a
-- held shard, so the probed numbers stay free.
CREATE FUNCTION idmint._entity_draw_spares(p integer, s integer, k integer, entity text, by_name boolean)
RETURNS integer[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- Custom plans of these statements were planned afresh at every call: 0.5 ms a batch.
SET plan_cache_mode = force_generic_plan
SET enable_memoize = off  -- (see _entity_members)
AS $$
DECLARE
    got integer[];
    mark constant text := current_setting('idmint.entity_mark', true);
    now_mark bigint;
    ignored text;
BEGIN
    BEGIN
        now_mark := currval('idmint.entity_handouts');
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        now_mark := NULL;  -- (none taken in this session, or DISCARD SEQUENCES)
    END;
    IF concat(current_setting('idmint.entity_spare_1', true), current_setting('idmint.entity_spare_2', true),
              current_setting('idmint.entity_spare_3', true), current_setting('idmint.entity_spare_4', true),
              current_setting('idmint.entity_spare_5', true), current_setting('idmint.entity_spare_6', true),
              current_setting('idmint.entity_spare_7', true), current_setting('idmint.entity_spare_8', true),
              current_setting('idmint.entity_spare_9', true)) <> ''
       AND mark IS DISTINCT FROM now_mark::text THEN
        k := 1;  -- a new mark would make lists that a rolled-back savepoint restored valid again
    END IF;
    SELECT array_agg(c.number ORDER BY c.o) INTO got
    FROM (SELECT m.number, min(m.o) AS o
          FROM (SELECT p * 1000000 + f0.l * 1000 + f0.r AS number, d.o
                -- (member d.i of the shard: idmint._entity_members inlined, a call per
                -- batch cost 0.2 ms)
                FROM idmint.entity_shards x JOIN idmint.entity_ranges r ON r.prefix = x.prefix,
                     (SELECT t.v % 5000 AS i, row_number() OVER () AS o
                      FROM idmint._random_draws(k + k / 4 + 6) AS t(v) WHERE t.v < 1000000) AS d,
                     LATERAL (SELECT d.i % 1000 AS l, 5 * x.shard + d.i / 1000 AS r) f6,
                     LATERAL (SELECT (f6.r + 2000 - (hashint4extended(f6.l, r.shard_key[6]) & 1023)::integer) % 1000 AS l, f6.l AS r) f5,
                     LATERAL (SELECT (f5.r + 2000 - (hashint4extended(f5.l, r.shard_key[5]) & 1023)::integer) % 1000 AS l, f5.l AS r) f4,
                     LATERAL (SELECT (f4.r + 2000 - (hashint4extended(f4.l, r.shard_key[4]) & 1023)::integer) % 1000 AS l, f4.l AS r OFFSET 0) f3,
                     LATERAL (SELECT (f3.r + 2000 - (hashint4extended(f3.l, r.shard_key[3]) & 1023)::integer) % 1000 AS l, f3.l AS r) f2,
                     LATERAL (SELECT (f2.r + 2000 - (hashint4extended(f2.l, r.shard_key[2]) & 1023)::integer) % 1000 AS l, f2.l AS r) f1,
                     LATERAL (SELECT (f1.r + 2000 - (hashint4extended(f1.l, r.shard_key[1]) & 1023)::integer) % 1000 AS l, f1.l AS r OFFSET 0) f0
                WHERE x.prefix = p AND x.shard = s AND x.holder = pg_current_xact_id() AND NOT x.deck
                  AND (r.name = entity OR NOT by_name)) AS m
          WHERE (SELECT true FROM idmint.entity_numbers e WHERE e.number = m.number) IS NULL
          GROUP BY m.number
          ORDER BY 2 LIMIT k) AS c;
    IF got IS NOT NULL THEN
        INSERT INTO idmint.entity_numbers (number, bound_at, issued_at, how, issued_by, issued_xid)
        SELECT x, NULL, statement_timestamp(), 'gen', session_user, pg_current_xact_id()
        FROM unnest(got) AS x ORDER BY x;
        IF cardinality(got) > 1 THEN
            ignored := set_config('idmint.entity_spare_' || p, array_to_string(got[2:], ''), true);
            ignored := set_config('idmint.entity_spares', 'y', true);  -- for _entity_flush
            ignored := set_config('idmint.entity_mark', setval('idmint.entity_handouts',
                greatest(coalesce(now_mark, 0),
                         CASE WHEN mark ~ '^[0-9]{1,15}$' THEN mark::bigint ELSE 0 END) + 1)::text, true);
        END IF;
    END IF;
    RETURN got;
END
$$;
COMMENT ON FUNCTION idmint._entity_draw_spares(integer, integer, integer, text, boolean) IS
    'Insert up to k random members of a shard this transaction holds (no deck) as its generated numbers, the first to hand out and the rest as its spares; NULL if none';

-- One number: the implementation behind gen_entity_number and the trigger; `entity` is
-- a one-digit prefix or a type name. Fast path while the shard this transaction took last
-- keeps sparse room (by the hint; a transaction's first number of the type takes a shard
-- first, with _entity_take_one): a random member of the shard is inserted by a single
-- INSERT ... SELECT that also checks, in the table, that this transaction holds the shard,
-- that it has no deck and (for a name) that the type has this name. So whatever an app
-- sets the hint or the name cache to, the fast path never inserts where it must not; a
-- check that fails just leads to the general path. ON CONFLICT never waits here: nobody
-- else inserts into a held shard. A uuid gives six 16-bit values (values of 65 000 and more
-- are dropped, so that v % 5 000 is uniform); after 12 candidates: the general path.
-- One small statement and no nested idmint call on purpose: on PostgreSQL 15 every call
-- of a function that pins search_path costs about as much as the insert, and a statement
-- costs mostly its executor start-up (docs/DESIGN.md).
CREATE FUNCTION idmint._issue_entity_number(entity text, how text, tbl oid) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bind constant boolean := tbl IS NOT NULL;  -- issued bound to a row of tbl (the trigger)
    by_name constant boolean := entity !~ '^[0-9]$';
    -- A type name's prefix, cached per session (checked by the insert, so never trusted).
    cache constant text := CASE WHEN by_name THEN 'idmint.entity_type_' || md5(entity) END;
    p integer := CASE WHEN by_name THEN nullif(current_setting(cache, true), '')::integer ELSE entity::integer END;
    setting text := current_setting('idmint.entity_' || p, true);
    st integer[];
    j integer;
    b bytea;
    v integer;
    got integer;
    spare text;
    now_mark bigint;
    drawn integer;
    batch integer := 1;
    gots integer[];
BEGIN
    IF NOT bind AND p IS NOT NULL THEN
        spare := current_setting('idmint.entity_spare_' || p, true);
        IF spare <> '' THEN
            -- A spare of an earlier call (see _entity_spares_remove): no statement at all,
            -- while the mark says that no rolled-back savepoint handed out any.
            BEGIN
                now_mark := currval('idmint.entity_handouts');
            EXCEPTION WHEN object_not_in_prerequisite_state THEN
                now_mark := NULL;  -- (DISCARD SEQUENCES)
            END;
            IF current_setting('idmint.entity_mark', true) = now_mark::text THEN
                setting := set_config('idmint.entity_spare_' || p, left(spare, -7), true);
                setting := set_config('idmint.entity_mark', setval('idmint.entity_handouts', now_mark + 1)::text, true);
                spare := right(spare, 7);
                IF spare ~ '^[1-9][0-9]{6}$' AND left(spare, 1)::integer = p THEN
                    IF current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN
                        setting := set_config('synchronous_commit', 'on', true);  -- as idmint._durable()
                    END IF;
                    RETURN spare;
                END IF;
            END IF;
        END IF;
        -- A batch grows with the DEFAULT numbers this transaction drew: a quarter of them,
        -- at most 64 (what is not handed out by its commit is un-issued, so at most a
        -- fifth of the rows it wrote); one number a call once its lists are stale.
        drawn := CASE WHEN current_setting('idmint.entity_drawn', true) ~ '^[0-9]{1,6}$'
                      THEN current_setting('idmint.entity_drawn', true)::integer ELSE 0 END;
        batch := CASE WHEN spare <> '' THEN 1 ELSE least(64, drawn / 4 + 1) END;
    END IF;
    IF setting IS NULL OR setting = '' THEN
        -- This transaction's first number of the type: take a shard here (weighted by its free numbers)
        -- (the general path would cost a dozen statements more).
        SET CONSTRAINTS idmint.entity_shards_flush DEFERRED;
        -- (No xid before this call: no numbers of this transaction anywhere.)
        st := idmint._entity_take_one(p, '{}', pg_current_xact_id_if_assigned() IS NOT NULL);
    ELSE
        st := setting::integer[];
    END IF;
    j := array_length(st, 1);
    IF j > 0 THEN
        IF st[j][4] = 0 AND 5000 - st[j][2] - st[j][3] > 1250 AND batch > 1 THEN  -- sizes as in _issue_entity_numbers
            gots := idmint._entity_draw_spares(p, st[j][1], batch, entity, by_name);
            IF gots IS NOT NULL THEN
                st[j][3] := st[j][3] + cardinality(gots);
                setting := set_config('idmint.entity_' || p, st::text, true);
                setting := set_config('idmint.entity_drawn', least(drawn + cardinality(gots), 999999)::text, true);
                IF current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN
                    setting := set_config('synchronous_commit', 'on', true);  -- as idmint._durable()
                END IF;
                RETURN gots[1]::text;
            END IF;
        ELSIF st[j][4] = 0 AND 5000 - st[j][2] - st[j][3] > 1250 THEN
            <<draw>>
            FOR attempt IN 1 .. 2 LOOP
                b := uuid_send(gen_random_uuid());
                -- Bytes 0..5 and 9..14: not the version (6) and variant (8) bits.
                FOREACH v IN ARRAY ARRAY[get_byte(b, 0) << 8 | get_byte(b, 1), get_byte(b, 2) << 8 | get_byte(b, 3),
                                         get_byte(b, 4) << 8 | get_byte(b, 5), get_byte(b, 9) << 8 | get_byte(b, 10),
                                         get_byte(b, 11) << 8 | get_byte(b, 12), get_byte(b, 13) << 8 | get_byte(b, 14)] LOOP
                    CONTINUE WHEN v >= 65000;
                    INSERT INTO idmint.entity_numbers AS e (number, bound_at, bound_to, issued_at, how, issued_by, issued_xid)
                    SELECT p * 1000000 + f0.l * 1000 + f0.r,
                           CASE WHEN bind THEN now() END, tbl, statement_timestamp(), how, session_user, x.holder
                    -- (member v % 5000 of the shard: idmint._entity_members inlined)
                    FROM idmint.entity_shards x JOIN idmint.entity_ranges r ON r.prefix = x.prefix,
                         LATERAL (SELECT v % 1000 AS l, 5 * x.shard + v % 5000 / 1000 AS r) f6,
                         LATERAL (SELECT (f6.r + 2000 - (hashint4extended(f6.l, r.shard_key[6]) & 1023)::integer) % 1000 AS l, f6.l AS r) f5,
                         LATERAL (SELECT (f5.r + 2000 - (hashint4extended(f5.l, r.shard_key[5]) & 1023)::integer) % 1000 AS l, f5.l AS r) f4,
                         LATERAL (SELECT (f4.r + 2000 - (hashint4extended(f4.l, r.shard_key[4]) & 1023)::integer) % 1000 AS l, f4.l AS r OFFSET 0) f3,
                         LATERAL (SELECT (f3.r + 2000 - (hashint4extended(f3.l, r.shard_key[3]) & 1023)::integer) % 1000 AS l, f3.l AS r) f2,
                         LATERAL (SELECT (f2.r + 2000 - (hashint4extended(f2.l, r.shard_key[2]) & 1023)::integer) % 1000 AS l, f2.l AS r) f1,
                         LATERAL (SELECT (f1.r + 2000 - (hashint4extended(f1.l, r.shard_key[1]) & 1023)::integer) % 1000 AS l, f1.l AS r OFFSET 0) f0
                    WHERE x.prefix = p AND x.shard = st[j][1] AND x.holder = pg_current_xact_id() AND NOT x.deck
                      AND (r.name = entity OR NOT by_name)
                    ON CONFLICT DO NOTHING
                    RETURNING e.number INTO got;
                    IF got IS NOT NULL THEN
                        st[j][3] := st[j][3] + 1;
                        setting := set_config('idmint.entity_' || p, st::text, true);
                        IF drawn IS NOT NULL THEN
                            setting := set_config('idmint.entity_drawn', least(drawn + 1, 999999)::text, true);
                        END IF;
                        IF current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN
                            setting := set_config('synchronous_commit', 'on', true);  -- as idmint._durable()
                        END IF;
                        RETURN got::text;
                    END IF;
                END LOOP;
            END LOOP;
        END IF;
    END IF;
    p := idmint._entity_prefix(entity);  -- raises ID003 / ID008
    IF by_name THEN
        setting := set_config(cache, p::text, false);
    END IF;
    RETURN (SELECT x FROM idmint._issue_entity_numbers(p, 1, how, bind, tbl => tbl) AS x);
END
$$;
COMMENT ON FUNCTION idmint._issue_entity_number(text, text, oid) IS
    'One number of a type given as a one-digit text or a name (gen_entity_number, the trigger): from the shard this transaction holds while it has sparse room, else the general path';


-- The one allocator. Issues n numbers of type `prefix` (checked here: ID003 outside 1..9,
-- ID008 unregistered; n first, so a huge n fails at once) in the caller's transaction and
-- returns them in random order. `how` goes to the audit; `bind` marks the numbers as
-- carried by an app row already (the trigger's own numbers).
CREATE FUNCTION idmint._issue_entity_numbers(prefix integer, n integer, how text, bind boolean DEFAULT false,
                                            avoid integer[] DEFAULT '{}', asked integer DEFAULT NULL,
                                            tbl oid DEFAULT NULL)
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- Planning the statements below per call costs more than running them for one number;
-- their plans do not depend on the values (probes are correlated subqueries).
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    p constant integer := _issue_entity_numbers.prefix;
    size constant integer := 5000;        -- numbers per shard
    -- A shard draws random candidates while it keeps at least this many free (at most 4
    -- probes per number); below, it deals from its deck (built once: at most 1 250 cards).
    -- Measured (50 000-number steps): from 50 % on, twice as many calls build decks.
    sparse_min constant integer := 1250;
    me constant xid8 := pg_current_xact_id();
    base integer;
    key bigint[];
    st integer[];
    hint integer[];
    take integer[] := '{}';
    fresh integer[];
    held integer[];
    want integer := n;
    phase integer := 1;
    room integer;
    k integer;
    m integer;
    s integer;
    need integer;
    j integer;
    setting text;
    total integer;
    kk integer;
    share integer;
    rest integer;
    draws integer;
    rounds integer;
    lim integer;
    nums integer[] := '{}';
    got_nums integer[];
    shard_nums integer[];
    drawn_idx integer[];  -- the sparse phase's member indexes (see _entity_members)
    got_idx integer[];
    shard_idx integer[];  -- the indexes of shard_nums
    free_now integer;
    newdeck integer[] := '{}';
    late integer[] := '{}';
    taken_now integer[] := '{}';  -- shards this call took (their state is known exactly)
    stolen integer[] := '{}';     -- numbers this call took from decks of shards others hold
    waiting boolean := false;     -- phase 6 reached: every shard is held, deals wait for cards
    short integer := 0;           -- cards planned but not found (taken by others meanwhile)
    short_shards integer[] := '{}';
    has_rows boolean;
    free_left bigint;
    type_name text;
    ts constant timestamptz := statement_timestamp();
    who constant text := session_user;
    bound timestamptz := CASE WHEN bind THEN now() END;
BEGIN
    -- n is checked first, so that a huge n fails at once.
    IF n IS NULL OR n NOT BETWEEN 1 AND 100000 THEN
        PERFORM idmint._error('invalid_argument', format('n %s is out of range', coalesce(n::text, 'NULL')),
                              'n must be between 1 and 100000');
    ELSIF p IS NULL OR p NOT BETWEEN 1 AND 9 THEN
        PERFORM idmint._entity_prefix(p);  -- ID003
    END IF;
    SELECT r.shard_key INTO key FROM idmint.entity_ranges r WHERE r.prefix = p;
    IF NOT FOUND THEN
        PERFORM idmint._entity_prefix(p);  -- ID008
    END IF;
    base := p * 1000000;
    IF current_setting('idmint.entity_spare_' || p, true) <> '' THEN
        -- This transaction's spares go back first: they count as issued, and would turn
        -- a call for the last free numbers into ID005 (see _entity_spares_remove).
        PERFORM idmint._unissue_entity_numbers(idmint._entity_spares_remove(p, NULL));
    END IF;
    -- The shards taken below queue their commit-time count, and cards taken from decks of
    -- shards others hold their threshold check; these must run at commit (an app may have
    -- said SET CONSTRAINTS ALL IMMEDIATE), when this call's rows exist.
    SET CONSTRAINTS idmint.entity_shards_flush, idmint.entity_steals_alert DEFERRED;
    -- Whether this transaction issued anything yet (planned with the value: a generic plan
    -- estimates a transaction's rows from the few huge ones and reads the whole table).
    EXECUTE 'SELECT EXISTS (SELECT FROM idmint.entity_numbers e WHERE e.issued_xid = $1)' INTO has_rows USING me;
    -- The shards this transaction holds, from the table; the hint adds how many numbers it
    -- issued from each and their order. A held shard the hint does not know (an app
    -- overwrote it) has its numbers counted from the rows.
    setting := current_setting('idmint.entity_' || p, true);
    hint := CASE WHEN setting IS NULL OR setting = '' THEN '{}' ELSE setting::integer[] END;
    -- (issued: with the committed steal rows of others since the shard was taken.)
    SELECT array_agg(ARRAY[x.shard::integer,
                           x.issued + (SELECT coalesce(sum(t.n), 0) FROM idmint.entity_steals t
                                       WHERE t.prefix = x.prefix AND t.shard = x.shard)::integer,
                           coalesce(h.mine, idmint._entity_mine(p, x.shard)),
                           x.deck::integer] ORDER BY h.i NULLS FIRST)
    INTO st
    FROM idmint.entity_shards x
    LEFT JOIN (SELECT hint[i][1] AS shard, hint[i][3] AS mine, i FROM generate_subscripts(hint, 1) AS i) h
           ON h.shard = x.shard
    WHERE x.holder = me AND x.prefix = p;
    st := coalesce(st, '{}');

    -- Plan how many numbers each shard gives, phase by phase, until the plan covers n:
    --  1. the shards this transaction holds, kept sparse (the most recently taken first);
    --  2. more shards, locked with SKIP LOCKED (never waits), in a random order weighted by
    --     their free numbers: for a small call any shard with a free number, for a large
    --     one shards with sparse room;
    --  3. the held shards down to their last number (decks);
    --  4. any other unlocked shard with a free number;
    --  5. cards of the decks of shards other open transactions hold, those no open
    --     transaction took (FOR UPDATE SKIP LOCKED on the cards: never waits), counted in
    --     entity_steals and inserted at once;
    --  6. only now wait: lock every other shard of the type (in shard order, so two
    --     waiters cannot deadlock on them), and deal waiting for cards that others are
    --     taking; what is still missing is missing on committed state: ID005.
    -- Taking a shard makes this transaction its holder (which queues its count at commit).
    -- Shards in `avoid` (their deck came up short in this call: other transactions took
    -- the rest of its cards meanwhile) give nothing before phase 6.
    WHILE want > 0 LOOP
        fresh := NULL;
        IF phase IN (2, 4) THEN
            held := ARRAY(SELECT st[g][1] FROM generate_subscripts(st, 1) AS g);
            -- (Small calls pick among all shards with a free number, weighted by them, so
            -- that every free number is as likely; large ones keep to sparse room first.)
            lim := CASE WHEN phase = 2 AND n > 1000 THEN sparse_min ELSE 0 END;
            IF phase = 2 AND n <= 1000 THEN
                fresh := idmint._entity_take_one(p, held, has_rows);  -- a small call needs one shard
            END IF;
            IF fresh IS NULL THEN
                -- About how many shards cover `want`: no more than that, as each may need
                -- its deck built and, near exhaustion, every shard held keeps its other
                -- free numbers from other issuers (a phase repeats if they fall short).
                SELECT ceil(want / avg(size - k.c - lim))::integer INTO kk
                FROM idmint.entity_shards y
                CROSS JOIN LATERAL (SELECT y.issued + CASE WHEN y.deck THEN (SELECT coalesce(sum(t.n), 0)
                                                                             FROM idmint.entity_steals t
                                                                             WHERE t.prefix = y.prefix AND t.shard = y.shard)::integer
                                                          ELSE 0 END AS c) k
                WHERE y.prefix = p AND k.c < size - lim AND y.shard <> ALL (held);
                IF kk > 0 THEN
                    fresh := idmint._entity_take_weighted(p, held, lim, kk, has_rows);
                END IF;
            END IF;
        ELSIF phase = 5 THEN
            -- Cards of shards that others hold (one statement: dealt, deleted, counted).
            -- Under REPEATABLE READ or SERIALIZABLE a card taken and committed after this
            -- snapshot raises 40001 here, for the caller: this snapshot cannot tell whether
            -- the free numbers nobody holds are enough, so it must not go on to wait.
            held := ARRAY(SELECT st[g][1] FROM generate_subscripts(st, 1) AS g);
            WITH c AS (
                SELECT f.prefix, f.shard, f.number FROM idmint.entity_free f
                WHERE f.prefix = p
                  AND f.shard = ANY (ARRAY(SELECT x.shard FROM idmint.entity_shards x
                                           WHERE x.prefix = p AND x.deck AND x.shard <> ALL (held)))
                ORDER BY gen_random_uuid() LIMIT want
                FOR UPDATE OF f SKIP LOCKED
            ), d AS (
                DELETE FROM idmint.entity_free f USING c
                WHERE f.prefix = c.prefix AND f.shard = c.shard AND f.number = c.number
                RETURNING f.shard, f.number
            ), u AS (
                INSERT INTO idmint.entity_steals AS t (prefix, shard, xid, n)
                SELECT p, d.shard, me, count(*) FROM d GROUP BY d.shard
                ON CONFLICT ON CONSTRAINT entity_steals_pkey DO UPDATE SET n = t.n + excluded.n
            )
            SELECT array_agg(d.number) INTO got_nums FROM d;
            IF got_nums IS NOT NULL THEN
                setting := set_config('idmint.entity_alerted_' || p, '', true);  -- a check is due again
                -- Inserted now: a shard taken in phase 6 counts them among this
                -- transaction's rows (see _entity_mine and the fold).
                INSERT INTO idmint.entity_numbers (number, bound_at, bound_to, issued_at, how, issued_by, issued_xid)
                SELECT x, bound, tbl, ts, how, who, me FROM unnest(got_nums) AS x ORDER BY x;
                has_rows := true;
                stolen := got_nums;
                want := want - cardinality(got_nums);
            END IF;
        ELSIF phase = 6 THEN
            waiting := true;
            held := ARRAY(SELECT st[g][1] FROM generate_subscripts(st, 1) AS g);
            IF current_setting('transaction_isolation') <> 'read committed' THEN
                -- A shard counted into after this snapshot (passed over above) raises 40001
                -- here, before any wait: its free numbers are held by nobody, but this
                -- snapshot cannot take them, and the wait below would end in 40001 too.
                PERFORM FROM idmint.entity_shards x
                WHERE x.prefix = p AND x.shard <> ALL (held) FOR NO KEY UPDATE SKIP LOCKED;
            END IF;
            BEGIN
                WITH z AS (
                    SELECT x.prefix, x.shard, x.issued, x.holder FROM idmint.entity_shards x
                    WHERE x.prefix = p AND x.shard <> ALL (held)
                    ORDER BY x.shard FOR NO KEY UPDATE
                ), d AS (
                    DELETE FROM idmint.entity_steals t USING z
                    WHERE t.prefix = z.prefix AND t.shard = z.shard
                    RETURNING t.shard, t.n, t.xid = me AS own
                ), f AS (
                    SELECT z.shard, coalesce(sum(d.n) FILTER (WHERE NOT d.own), 0)::integer AS others,
                           coalesce(sum(d.n) FILTER (WHERE d.own), 0)::integer AS own
                    FROM z LEFT JOIN d ON d.shard = z.shard GROUP BY z.shard
                ), a AS (
                    UPDATE idmint.entity_shards x
                    SET holder = me,
                        issued = x.issued + f.others
                                 - CASE WHEN x.holder IS DISTINCT FROM me AND has_rows
                                        THEN idmint._entity_mine(p, x.shard) - f.own ELSE 0 END
                    FROM z JOIN f ON f.shard = z.shard
                    WHERE x.prefix = z.prefix AND x.shard = z.shard
                    RETURNING x.shard, x.issued, z.issued + f.others + f.own - x.issued AS mine, x.deck
                )
                SELECT array_agg(ARRAY[a.shard::integer, a.issued, a.mine, a.deck::integer] ORDER BY a.shard)
                INTO fresh FROM a;
            EXCEPTION WHEN deadlock_detected THEN
                -- Two short calls, each waiting for a shard the other's transaction holds:
                -- neither could ever succeed. This one gives up with ID005 (the contract's
                -- only outcome of a wait besides success); the other waits on for its end.
                SELECT r.name INTO type_name FROM idmint.entity_ranges r WHERE r.prefix = p;
                PERFORM idmint._error('entity_range_exhausted',
                    format('entity type %s (%s): fewer than %s free numbers are not held by open transactions, '
                           'and a transaction holding the rest is waiting for this one', p, type_name, coalesce(asked, n)),
                    'ask for fewer, or retry once the other transactions have ended');
            END;
        END IF;
        IF fresh IS NOT NULL THEN
            st := st || fresh;
            taken_now := taken_now || ARRAY(SELECT fresh[g][1] FROM generate_subscripts(fresh, 1) AS g);
        END IF;
        WHILE cardinality(take) < coalesce(array_length(st, 1), 0) LOOP
            take := take || 0;
        END LOOP;
        IF phase <= 2 THEN
            -- Growing: fill the held shards up to their sparse limit, one after another.
            -- A small call uses all of a shard it just picked that has no sparse room left
            -- (its deck, built if need be): such a shard was picked for its free numbers.
            FOR j IN REVERSE coalesce(array_length(st, 1), 0) .. 1 LOOP
                EXIT WHEN want = 0;
                room := size - st[j][2] - st[j][3] - take[j]
                        - CASE WHEN st[j][4] = 0
                                    AND (n > 1000 OR st[j][3] + take[j] > 0
                                         OR size - st[j][2] > sparse_min)
                               THEN sparse_min ELSE 0 END;
                IF st[j][1] = ANY (avoid) THEN
                    room := 0;  -- its deck came up short (phase 1 only: phase 6 waits)
                END IF;
                IF room > 0 THEN
                    k := least(room, want);
                    take[j] := take[j] + k;
                    want := want - k;
                END IF;
            END LOOP;
        ELSE
            -- Nearly full: take from every held shard in proportion to its free numbers,
            -- so that shards drain evenly and the last free numbers stay spread over many
            -- shards (one open transaction then holds few of them).
            total := 0;
            FOR j IN 1 .. coalesce(array_length(st, 1), 0) LOOP
                CONTINUE WHEN NOT waiting AND st[j][1] = ANY (avoid);
                total := total + greatest(0, size - st[j][2] - st[j][3] - take[j]);
            END LOOP;
            IF total > 0 THEN
                share := least(want, total);
                rest := share;
                FOR j IN REVERSE coalesce(array_length(st, 1), 0) .. 1 LOOP
                    CONTINUE WHEN NOT waiting AND st[j][1] = ANY (avoid);
                    room := greatest(0, size - st[j][2] - st[j][3] - take[j]);
                    k := floor(share::numeric * room / total);
                    take[j] := take[j] + k;
                    rest := rest - k;
                END LOOP;
                FOR j IN REVERSE coalesce(array_length(st, 1), 0) .. 1 LOOP
                    EXIT WHEN rest = 0;
                    CONTINUE WHEN NOT waiting AND st[j][1] = ANY (avoid);
                    room := size - st[j][2] - st[j][3] - take[j];
                    IF room > 0 THEN
                        k := least(room, rest);
                        take[j] := take[j] + k;
                        rest := rest - k;
                    END IF;
                END LOOP;
                want := want - share;
            END IF;
        END IF;
        IF want > 0 AND phase = 6 THEN
            SELECT r.name INTO type_name FROM idmint.entity_ranges r WHERE r.prefix = p;
            -- (A top-up's caller asked for `asked` and has the rest of it already.)
            free_left := coalesce(asked, n) - want;
            PERFORM idmint._error('entity_range_exhausted',
                format('entity type %s (%s) has %s free number(s), %s requested', p, type_name, free_left,
                       coalesce(asked, n)),
                CASE WHEN free_left > 0 THEN format('ask for at most %s', free_left)
                     ELSE 'the type''s 1 000 000 numbers are all issued; register another type with idmint.add_entity_type' END);
        END IF;
        -- Phases 2 and 4 repeat while they find shards (some may have been taken meanwhile).
        IF NOT (phase IN (2, 4) AND fresh IS NOT NULL) THEN
            phase := phase + 1;
        END IF;
    END LOOP;

    FOR j IN REVERSE coalesce(array_length(st, 1), 0) .. 1 LOOP
        k := take[j];
        CONTINUE WHEN k IS NULL OR k = 0;
        s := st[j][1];
        m := size - st[j][2] - st[j][3];  -- the shard's free numbers
        IF st[j][4] = 0 AND m - k >= sparse_min THEN
            -- Sparse: random members of the shard (uniform draws, so also after birthday
            -- repeats); the first distinct ones not issued yet, in draw order, are taken.
            -- No other transaction can insert into a shard this one holds: no waits.
            need := k;
            rounds := 0;
            LOOP
                -- Enough draws for `need` distinct free members with a margin: d draws
                -- of 5 000 reach about 5 000 * (1 - exp(-d / 5 000)) distinct members.
                free_now := m - (k - need);
                draws := ceil(-size * ln(greatest(0.02, 1 - (need * 1.05 + 12)::float8 / free_now)) * 1.003 + 6)::integer;
                -- Each drawn index once, in the order of its first draw: index and member
                -- are one to one, so a repeat costs no second member.
                drawn_idx := ARRAY(SELECT u.q FROM (SELECT x.v % 5000 AS q, min(x.o) AS o
                                                    FROM idmint._random_draws(draws) WITH ORDINALITY AS x(v, o)
                                                    WHERE x.v < 1045000 GROUP BY 1) u
                                   ORDER BY u.o);
                SELECT array_agg(c.number ORDER BY c.i), array_agg(c.q ORDER BY c.i) INTO got_nums, got_idx
                FROM (SELECT c.number, c.i, c.q
                      FROM (SELECT base + d.v AS number, d.ord AS i, drawn_idx[d.ord] AS q
                            FROM idmint._entity_members(key, s, drawn_idx) d) c
                      -- Nothing issued in a shard this call took (its state from the table,
                      -- not from the hint an app could set): no probe.
                      WHERE (st[j][2] + st[j][3] + k - need = 0 AND s = ANY (taken_now)
                             OR (SELECT true FROM idmint.entity_numbers y WHERE y.number = c.number) IS NULL)
                        AND c.number <> ALL (coalesce(shard_nums, '{}'))
                      ORDER BY c.i
                      LIMIT need) c;
                shard_nums := coalesce(shard_nums, '{}') || coalesce(got_nums, '{}');
                shard_idx := coalesce(shard_idx, '{}') || coalesce(got_idx, '{}');
                need := k - cardinality(shard_nums);
                EXIT WHEN need = 0;
                -- Honest counts finish in a round or two; only an overwritten hint (the
                -- shard has fewer free numbers than it says) gets here.
                rounds := rounds + 1;
                IF rounds > 50 THEN
                    PERFORM idmint._error('entity_range_exhausted',
                        format('entity type %s: shard %s has fewer free numbers than this transaction''s setting idmint.entity_%s says', p, s, p),
                        'do not set idmint.entity_* settings');
                END IF;
            END LOOP;
            nums := nums || shard_nums;
            -- A large call that leaves the shard at its sparse limit builds its deck too
            -- (below, once its numbers are inserted): 5 000 probes on top of at least
            -- 1 000 numbers. So deck builds are spread over the calls that fill the type
            -- instead of all falling on the first calls past 75 %.
            IF k >= 1000 AND m - k <= sparse_min THEN
                IF s = ANY (taken_now) AND st[j][2] = 0 AND st[j][3] = 0 THEN
                    -- Empty when this call took it: its free numbers are the members this
                    -- call did not draw (no probes; 0 % fill, 100 000-number calls).
                    PERFORM idmint._entity_build_deck(p, s, key, m - k, shard_idx);
                ELSE
                    late := late || ARRAY[[s, m - k]];
                END IF;
                st[j][4] := 1;
                newdeck := newdeck || s;
            END IF;
            shard_nums := NULL;
            shard_idx := NULL;
        ELSE
            IF st[j][4] = 0 THEN
                PERFORM idmint._entity_build_deck(p, s, key, m);
                st[j][4] := 1;
                newdeck := newdeck || s;
            END IF;
            -- Deal k cards (see _entity_deal: uniform, drawn anew; cards others are
            -- taking passed over, or in phase 6 waited for).
            got_nums := idmint._entity_deal(p, s, k, waiting, coalesce(asked, n));
            IF cardinality(got_nums) < k THEN
                -- Others took some of the cards since this plan was made: the rest comes
                -- from elsewhere (below), never an error here.
                short := short + k - cardinality(got_nums);
                short_shards := short_shards || s;
                k := cardinality(got_nums);
            END IF;
            DELETE FROM idmint.entity_free f WHERE f.prefix = p AND f.shard = s AND f.number = ANY (got_nums);
            nums := nums || got_nums;
        END IF;
        st[j][3] := st[j][3] + k;
    END LOOP;
    -- One insert, in number order (index locality); the caller gets draw order.
    INSERT INTO idmint.entity_numbers (number, bound_at, bound_to, issued_at, how, issued_by, issued_xid)
    SELECT x, bound, tbl, ts, how, who, me FROM unnest(nums) AS x ORDER BY x;
    FOR j IN 1 .. coalesce(array_length(late, 1), 0) LOOP
        PERFORM idmint._entity_build_deck(p, late[j][1], key, late[j][2]);
    END LOOP;
    IF cardinality(newdeck) > 0 THEN
        UPDATE idmint.entity_shards x SET deck = true WHERE x.prefix = p AND x.shard = ANY (newdeck);
    END IF;
    setting := set_config('idmint.entity_' || p, st::text, true);
    IF current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN
        setting := set_config('synchronous_commit', 'on', true);  -- as idmint._durable()
    END IF;
    RETURN QUERY SELECT x::text FROM unnest(nums || stolen) AS x;
    IF short > 0 AND waiting AND current_setting('transaction_isolation') <> 'read committed' THEN
        -- Cards taken and committed after this snapshot (passed over by the deal): a
        -- top-up would see the same snapshot and come up short again, for ever.
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
            MESSAGE = format('could not serialize access: numbers of entity type %s were taken after this transaction''s snapshot', p),
            HINT = 'retry the transaction';
    END IF;
    IF short > 0 THEN
        -- Top up: the same allocator for what the short decks did not give, with the hint
        -- (set above) counting what they gave; those decks give nothing more before its
        -- phase 6, so it takes other shards, steals or waits, and decides ID005 there
        -- (which aborts this statement: nothing is registered).
        RETURN QUERY SELECT x FROM idmint._issue_entity_numbers(p, short, how, bind, avoid || short_shards,
                                                                 coalesce(asked, n), tbl) AS x;
    END IF;
END
$$;
COMMENT ON FUNCTION idmint._issue_entity_numbers(integer, integer, text, boolean, integer[], integer, oid) IS
    'Issue n numbers of a type from shards this transaction holds (SKIP LOCKED: never waits while enough free numbers are not held by others), uniform within each shard; ID005 (nothing issued) if fewer are free on committed state';

-- Count a transaction's numbers into its shards, at commit (deferred trigger, queued when
-- the transaction took the shard). The count is taken from the rows the transaction
-- inserted (entity_numbers.issued_xid), never from a setting an app could change. Each
-- firing is for one shard taken (NEW); the first counts every held shard of the types the
-- transaction has rows in and of NEW's type (read by prefix: `holder` has no index, so
-- that taking and counting are HOT updates); later firings find their shard counted.
-- Issuing again after a count (e.g. from another commit-time trigger) takes the shard
-- again (taking its counted rows back out, see _entity_mine), which queues another firing.
CREATE FUNCTION idmint._entity_flush() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    me constant xid8 := pg_current_xact_id();
    types integer[];
    ignored text;
BEGIN
    IF NOT EXISTS (SELECT FROM idmint.entity_shards x
                   WHERE x.prefix = NEW.prefix AND x.shard = NEW.shard AND x.holder = me) THEN
        RETURN NULL;
    END IF;
    IF current_setting('idmint.entity_spares', true) = 'y' THEN
        PERFORM idmint._entity_spares_drop();  -- not handed out: not issued (see _entity_spares_remove)
    END IF;
    WITH mine AS MATERIALIZED (
        SELECT x.prefix, x.shard, count(*)::integer AS n
        FROM idmint._entity_shards_of(ARRAY(SELECT e.number FROM idmint.entity_numbers e WHERE e.issued_xid = me)) x
        GROUP BY 1, 2
    ), counted AS (
        UPDATE idmint.entity_shards x
        SET issued = x.issued + coalesce((SELECT m.n FROM mine m WHERE m.prefix = x.prefix AND m.shard = x.shard), 0),
            holder = NULL
        WHERE x.prefix IN (SELECT m.prefix FROM mine m UNION SELECT NEW.prefix) AND x.holder = me
        RETURNING x.prefix
    )
    SELECT array_agg(DISTINCT c.prefix ORDER BY c.prefix) INTO types FROM counted c;
    -- Types in prefix order, so two committing transactions take the alert locks in the
    -- same order. The hint is spent: a later call of this transaction starts afresh.
    -- While trigger bindings of this transaction wait to be settled, some of the numbers
    -- of their type just counted may be un-issued (an upsert that stored no row): the
    -- settling checks that type instead (settle_bindings), so that nothing is sent early.
    FOR i IN 1 .. coalesce(cardinality(types), 0) LOOP
        ignored := set_config('idmint.entity_' || types[i], '', true);
        PERFORM idmint._entity_commit_alert(types[i]);
    END LOOP;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION idmint._entity_flush() IS
    'Deferred trigger: add this transaction''s numbers (counted from its rows) to the shards it holds, then check the capacity thresholds';

CREATE CONSTRAINT TRIGGER entity_shards_flush AFTER UPDATE ON idmint.entity_shards
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW WHEN (NEW.holder IS NOT NULL)
EXECUTE FUNCTION idmint._entity_flush();

-- A transaction that took cards of shards others held (entity_steals) may hold no shard,
-- so no count runs at its commit: this trigger checks the thresholds then instead. On
-- UPDATE too: a later steal from the same shard only raises the row, and must be checked
-- again if an early check (SET CONSTRAINTS ALL IMMEDIATE) ran before it.
CREATE FUNCTION idmint._entity_steals_alert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM idmint._entity_commit_alert(NEW.prefix, true);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION idmint._entity_steals_alert() IS
    'Deferred trigger: check the capacity thresholds at the commit of a transaction that took cards of shards others held';

CREATE CONSTRAINT TRIGGER entity_steals_alert AFTER INSERT OR UPDATE ON idmint.entity_steals
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW
EXECUTE FUNCTION idmint._entity_steals_alert();

-- NOTIFY idmint_capacity for each threshold (0.6, 0.8, 0.95) that the type's committed count
-- has reached and that was not notified yet (entity_ranges.alerted). Called while counting
-- at commit. Below 50 % fill nothing can be due, and it returns without a lock; from 50 %
-- on it serialises the committing transactions of the type on the type row (for the
-- moment of their commit only), so each crossing is sent once, by the commit that makes
-- it. Two cases cannot see the crossing at commit: transactions holding together more
-- than 100 000 uncommitted numbers that commit at the same instant from below 50 %, a
-- REPEATABLE READ or SERIALIZABLE commit (its snapshot cannot see later commits). Their
-- crossing is sent by the next commit of the type from 50 % on, or by the next cleanup
-- run (`catch_up`: purge_expired_reservations, which skips a type whose row is locked:
-- a committing transaction is checking it right then). A commit tries for the type row
-- for at most 500 ms, with NOWAIT and short sleeps, so it is never in a lock wait: a
-- transaction can hold the row past its own check (its count fired early, by SET
-- CONSTRAINTS ALL IMMEDIATE, or a slow commit-time trigger of the app runs after it), and
-- waiting for it made commits wait for an open transaction, or deadlock across two types
-- whatever deadlock_timeout is. After 500 ms this commit leaves the check to the next one
-- (or the cleanup), as above. `alerted` never goes down: an entity
-- type's committed count never does (an un-issue only takes back numbers that this
-- transaction's count had just added).
CREATE FUNCTION idmint._entity_alert(prefix integer, catch_up boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    total bigint;
    cap integer;
    level numeric;
    reached numeric;
BEGIN
    SELECT r.alerted INTO level FROM idmint.entity_ranges r WHERE r.prefix = _entity_alert.prefix;
    IF level >= 0.95 THEN
        RETURN;
    END IF;
    SELECT sum(x.issued) + (SELECT coalesce(sum(t.n), 0) FROM idmint.entity_steals t
                            WHERE t.prefix = _entity_alert.prefix)
    INTO total FROM idmint.entity_shards x WHERE x.prefix = _entity_alert.prefix;
    IF total * 2 < 1000000 THEN
        RETURN;
    END IF;
    BEGIN
        IF catch_up THEN
            SELECT r.alerted, r.capacity INTO level, cap FROM idmint.entity_ranges r
            WHERE r.prefix = _entity_alert.prefix FOR UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                RETURN;
            END IF;
        ELSE
            FOR attempt IN 1 .. 250 LOOP
                BEGIN
                    SELECT r.alerted, r.capacity INTO level, cap FROM idmint.entity_ranges r
                    WHERE r.prefix = _entity_alert.prefix FOR UPDATE NOWAIT;
                    EXIT;
                EXCEPTION WHEN lock_not_available THEN
                    IF attempt = 250 THEN
                        RETURN;  -- held past a check (see above): the next check sends it
                    END IF;
                    PERFORM pg_sleep(0.002);
                END;
            END LOOP;
        END IF;
    EXCEPTION WHEN serialization_failure THEN
        -- REPEATABLE READ / SERIALIZABLE: a commit after this snapshot changed `alerted`,
        -- so it notified what it reached; failing this commit would be wrong.
        RETURN;
    END;
    -- Under READ COMMITTED a new snapshot, taken after the lock: it sees every commit that
    -- held it before.
    SELECT sum(x.issued) + (SELECT coalesce(sum(t.n), 0) FROM idmint.entity_steals t
                            WHERE t.prefix = _entity_alert.prefix)
    INTO total FROM idmint.entity_shards x WHERE x.prefix = _entity_alert.prefix;
    reached := coalesce((SELECT max(t) FROM unnest(idmint._thresholds('entity')) AS t WHERE total >= t * cap), 0);
    IF reached > level THEN
        -- Only the thresholds above the last one notified, each reached one once.
        PERFORM idmint._capacity_alert('entity', to_jsonb(_entity_alert.prefix), cap, 0, total,
                                       ARRAY(SELECT t FROM unnest(idmint._thresholds('entity')) AS t WHERE t > level));
        UPDATE idmint.entity_ranges r SET alerted = reached WHERE r.prefix = _entity_alert.prefix;
    END IF;
END
$$;
COMMENT ON FUNCTION idmint._entity_alert(integer, boolean) IS
    'At commit (or catching up, from the cleanup): notify each entity capacity threshold the type''s committed count reached for the first time (exactly once per crossing)';

-- At commit: check a type's thresholds, unless trigger bindings of this transaction wait
-- to be settled (some of its numbers may still be un-issued: an upsert that stored no
-- row); settle_bindings checks the type then, so that nothing is sent early. `once` (the
-- steal rows' trigger, fired per steal row): skip when this transaction checked the type
-- already and took no card since (the setting idmint.entity_alerted_<prefix>, which the
-- steals clear), so that a commit tries for the type row once, not once per shard it
-- stole from (each try may take 500 ms, see _entity_alert). An app that sets it itself
-- only defers its own crossing to the next check.
CREATE FUNCTION idmint._entity_commit_alert(prefix integer, once boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    mark constant text := 'idmint.entity_alerted_' || _entity_commit_alert.prefix;
BEGIN
    IF once AND current_setting(mark, true) = 'done' THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM idmint.pending_bindings b
                   WHERE b.xid = pg_current_xact_id() AND b.kind = 'entity'
                     AND b.number BETWEEN _entity_commit_alert.prefix * 1000000
                                      AND _entity_commit_alert.prefix * 1000000 + 999999) THEN
        PERFORM idmint._entity_alert(_entity_commit_alert.prefix);
        PERFORM set_config(mark, 'done', true);
    END IF;
END
$$;
COMMENT ON FUNCTION idmint._entity_commit_alert(integer, boolean) IS
    'At commit: check a type''s capacity thresholds unless trigger bindings of this transaction are still to be settled (once: not again until it takes another card)';

-- The public generators are one-line wrappers of the allocator. Measured: calling it in
-- FROM costs about a third of calling it in the select list (ProjectSet), per call.
CREATE FUNCTION idmint.gen_entity_numbers(entity integer, n integer) RETURNS SETOF text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT x FROM idmint._issue_entity_numbers(entity, n, 'gen') AS x $$;
COMMENT ON FUNCTION idmint.gen_entity_numbers(integer, integer) IS
    'n (1..100000) new random numbers of the type with this prefix, registered in the caller''s transaction. ID003 bad n/prefix, ID005 fewer free, ID008 unregistered';

CREATE FUNCTION idmint.gen_entity_numbers(entity text, n integer) RETURNS SETOF text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT x FROM idmint._issue_entity_numbers(idmint._entity_prefix(entity), n, 'gen') AS x $$;
COMMENT ON FUNCTION idmint.gen_entity_numbers(text, integer) IS
    'gen_entity_numbers for a type given as a one-digit text or a type name (ID008 unknown)';

-- The single-number generators: one call of the one implementation,
-- _issue_entity_number; as a column DEFAULT they run once per row.
CREATE FUNCTION idmint.gen_entity_number(entity integer) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF entity IS NULL OR entity NOT BETWEEN 1 AND 9 THEN
        PERFORM idmint._entity_prefix(entity);  -- ID003
    END IF;
    RETURN idmint._issue_entity_number(entity::text, 'gen', NULL);
END
$$;
COMMENT ON FUNCTION idmint.gen_entity_number(integer) IS
    'One new random number of the type with this prefix; usable as a column DEFAULT. ID003/ID005/ID008 as gen_entity_numbers';

CREATE FUNCTION idmint.gen_entity_number(entity text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN idmint._issue_entity_number(entity, 'gen', NULL);
END
$$;
COMMENT ON FUNCTION idmint.gen_entity_number(text) IS
    'One new random number of a type given by name or one-digit text, e.g. DEFAULT idmint.gen_entity_number(''part'')';


-- A claim takes its number's card (a shard with a deck): true if it did, false if the
-- number has no card (issued, or never dealt). Waits only while another open transaction
-- is taking this very number; a wait that would deadlock is ID004 (two issuers never
-- deadlock). A DELETE that waited may have missed the card that transaction gave back
-- at its end (a new row, after the statement's snapshot): a new statement looks again.
CREATE FUNCTION idmint._entity_take_card(p integer, s integer, v integer) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    took boolean;
BEGIN
    LOOP
        BEGIN
            DELETE FROM idmint.entity_free f WHERE f.prefix = p AND f.shard = s AND f.number = v;
            took := FOUND;
        EXCEPTION WHEN deadlock_detected THEN
            PERFORM idmint._error('already_taken',
                format('entity number %s is being issued by another open transaction, which waits for this one', v),
                'generate a new one with idmint.gen_entity_number, or retry once the other transaction has ended');
        END;
        IF took THEN
            RETURN true;
        ELSIF EXISTS (SELECT FROM idmint.entity_numbers e WHERE e.number = v)
              OR NOT EXISTS (SELECT FROM idmint.entity_free f WHERE f.prefix = p AND f.shard = s AND f.number = v) THEN
            RETURN false;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION idmint._entity_take_card(integer, integer, integer) IS
    'Delete a number''s card for its claim (false: it has none); a deadlocking wait is ID004';

-- Register one given number (claim_entity_number, and the trigger for a value idmint
-- never issued). `wanted` NULL: any registered type. The claim takes the number's shard
-- like a generator does (holder, row lock), so it waits while another open transaction
-- holds that shard (1/200 of the type). Deliberately: a claim that inserted into a shard
-- held by an open generator would make that generator wait whenever one of its random
-- candidates met the claimed, uncommitted number, and generators never wait. Except in a
-- shard with a deck that another open transaction holds: its holder deals only cards
-- (never probes), so the claim takes the number's card like a stealing call (entity_steals)
-- and waits only while another transaction is taking that card; a deadlock there (the
-- other waits for this one) is ID004: the number is being issued by another transaction.
CREATE FUNCTION idmint._claim_entity_number(number text, wanted integer, how text, bind boolean DEFAULT false,
                                           tbl oid DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- No xid before this call: no numbers of this transaction anywhere (see _entity_mine).
    maybe_mine constant boolean := pg_current_xact_id_if_assigned() IS NOT NULL;
    me constant xid8 := pg_current_xact_id();
    p integer;
    v integer;
    key bigint[];
    s integer;
    now_issued integer;
    now_mine integer;
    now_deck boolean;
    setting text;
    st integer[];
    j integer;
BEGIN
    IF number IS NULL OR number !~ '^[1-9][0-9]{6}$' THEN
        PERFORM idmint._error('invalid_argument',
            format('malformed entity number %s', coalesce(quote_literal(left(number, 100)), 'NULL')),
            'an entity number is 7 digits, the first being its type prefix 1..9');
    END IF;
    p := substr(number, 1, 1)::integer;
    v := number::integer;
    SELECT r.shard_key INTO key FROM idmint.entity_ranges r WHERE r.prefix = p;
    IF wanted IS NOT NULL AND p <> wanted THEN
        PERFORM idmint._error('invalid_argument',
            format('entity number %s is not of type %s', number, wanted),
            format('numbers of this type start with %s', wanted));
    ELSIF key IS NULL THEN
        PERFORM idmint._error('unknown_entity_type',
            format('entity number %s has prefix %s, which is not a registered type', number, p),
            'see idmint.entity_types, or register the type with idmint.add_entity_type');
    END IF;
    FOR attempt IN 1 .. 2 LOOP
        -- The second time: issued by a transaction that committed while we waited.
        IF EXISTS (SELECT FROM idmint.entity_numbers e WHERE e.number = v) THEN
            IF maybe_mine AND idmint._entity_spares_remove(p, ARRAY[v]) <> '{}' THEN
                -- A spare of this transaction that no call handed out: claimed now.
                UPDATE idmint.entity_numbers e
                SET issued_at = statement_timestamp(), how = _claim_entity_number.how,
                    bound_at = CASE WHEN bind THEN now() END, bound_to = CASE WHEN bind THEN tbl END
                WHERE e.number = v;
                PERFORM idmint._durable();
                RETURN number;
            END IF;
            PERFORM idmint._error('already_taken', format('entity number %s is already issued', number),
                                  'generate a new one with idmint.gen_entity_number');
        END IF;
        EXIT WHEN attempt = 2;
        s := (SELECT x.shard FROM idmint._entity_shards_of(ARRAY[v]) x);
        SET CONSTRAINTS idmint.entity_shards_flush, idmint.entity_steals_alert DEFERRED;
        -- A shard with a deck that this transaction does not hold: take the number's card
        -- instead of the shard (a holder deals only cards, so it never meets the number).
        -- Also when nobody holds it: another open transaction may have taken the card (a
        -- steal), and only the card's lock tells (taking the shard, the claim would insert
        -- next to that transaction's uncommitted number: 23505, or a deadlock with it).
        IF EXISTS (SELECT FROM idmint.entity_shards x
                   WHERE x.prefix = p AND x.shard = s AND x.deck AND x.holder IS DISTINCT FROM me) THEN
            IF NOT idmint._entity_take_card(p, s, v) THEN
                PERFORM idmint._error('already_taken', format('entity number %s is already issued', number),
                                      'generate a new one with idmint.gen_entity_number');
            END IF;
            INSERT INTO idmint.entity_steals AS t (prefix, shard, xid, n) VALUES (p, s, me, 1)
            ON CONFLICT ON CONSTRAINT entity_steals_pkey DO UPDATE SET n = t.n + 1;
            setting := set_config('idmint.entity_alerted_' || p, '', true);  -- a check is due again
            INSERT INTO idmint.entity_numbers (number, bound_at, bound_to, issued_at, how, issued_by, issued_xid)
            VALUES (v, CASE WHEN bind THEN now() END, CASE WHEN bind THEN tbl END, statement_timestamp(), how, session_user, me);
            PERFORM idmint._durable();
            RETURN number;
        END IF;
        WITH z AS (
            SELECT x.prefix, x.shard, x.issued FROM idmint.entity_shards x
            WHERE x.prefix = p AND x.shard = s FOR NO KEY UPDATE
        ), d AS (
            DELETE FROM idmint.entity_steals t USING z
            WHERE t.prefix = z.prefix AND t.shard = z.shard
            RETURNING t.n, t.xid = me AS own
        ), f AS (
            SELECT coalesce(sum(d.n) FILTER (WHERE NOT d.own), 0)::integer AS others,
                   coalesce(sum(d.n) FILTER (WHERE d.own), 0)::integer AS own
            FROM d
        )
        UPDATE idmint.entity_shards x
        SET holder = me,
            issued = x.issued + f.others - CASE WHEN maybe_mine AND x.holder IS DISTINCT FROM me
                                                THEN idmint._entity_mine(p, s) - f.own ELSE 0 END
        FROM z, f WHERE x.prefix = z.prefix AND x.shard = z.shard
        RETURNING x.issued, z.issued + f.others + f.own - x.issued, x.deck INTO now_issued, now_mine, now_deck;
    END LOOP;
    IF now_deck THEN
        -- Its card leaves first: a steal (SKIP LOCKED) can no longer take it and then wait
        -- on the unique index for this insert. If another transaction took it and
        -- committed, the insert below meets its number.
        PERFORM idmint._entity_take_card(p, s, v);
    END IF;
    INSERT INTO idmint.entity_numbers (number, bound_at, bound_to, issued_at, how, issued_by, issued_xid)
    VALUES (v, CASE WHEN bind THEN now() END, CASE WHEN bind THEN tbl END, statement_timestamp(), how, session_user, me)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        PERFORM idmint._error('already_taken', format('entity number %s is already issued', number),
                              'generate a new one with idmint.gen_entity_number');
    END IF;
    -- The hint: one more number of this shard (added first if new: the generators keep
    -- using the shards they took last).
    setting := current_setting('idmint.entity_' || p, true);
    st := CASE WHEN setting IS NULL OR setting = '' THEN '{}' ELSE setting::integer[] END;
    j := array_position(ARRAY(SELECT st[g][1] FROM generate_subscripts(st, 1) AS g), s);
    IF j IS NULL THEN
        st := ARRAY[[s, now_issued, now_mine + 1, now_deck::integer]] || st;
    ELSE
        st[j][3] := st[j][3] + 1;
        st[j][4] := now_deck::integer;
    END IF;
    setting := set_config('idmint.entity_' || p, st::text, true);
    PERFORM idmint._durable();
    RETURN number;
END
$$;
COMMENT ON FUNCTION idmint._claim_entity_number(text, integer, text, boolean, oid) IS
    'Register a given entity number in its shard (waits while another open transaction holds the shard). ID003 malformed/other type, ID004 issued, ID008 unregistered';

-- Un-issue numbers that this transaction issued (an upsert's proposed row was not stored):
-- afterwards they are free exactly as if never issued: the shard counts, the decks and
-- later calls behave as if the issue never happened. Numbers this transaction did not
-- issue are left alone. Their shards are held by this transaction already (it issued
-- from them); taking them again queues the count again if it ran already. Numbers it
-- stole (entity_steals) go back as cards and its steal row goes down, without taking
-- the shard (its holder is another open transaction).
CREATE FUNCTION idmint._unissue_entity_numbers(numbers integer[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    me constant xid8 := pg_current_xact_id();
    gone integer[];
    setting text;
    st integer[];
    j integer;
    g record;
    deck boolean;
BEGIN
    IF numbers = '{}' THEN
        RETURN;
    END IF;
    WITH d AS (
        DELETE FROM idmint.entity_numbers e
        WHERE e.number = ANY (numbers) AND e.issued_xid = me
        RETURNING e.number)
    SELECT array_agg(d.number) INTO gone FROM d;
    IF gone IS NULL THEN
        RETURN;
    END IF;
    SET CONSTRAINTS idmint.entity_shards_flush DEFERRED;
    FOR g IN
        SELECT u.p, u.s, u.xs, y.holder,
               (SELECT t.n FROM idmint.entity_steals t WHERE t.prefix = u.p AND t.shard = u.s AND t.xid = me) AS stole
        FROM (SELECT x.prefix AS p, x.shard AS s, array_agg(x.number) AS xs
              FROM idmint._entity_shards_of(gone) x
              GROUP BY 1, 2) u
        JOIN idmint.entity_shards y ON y.prefix = u.p AND y.shard = u.s
    LOOP
        IF g.holder IS DISTINCT FROM me AND g.stole >= cardinality(g.xs) THEN
            -- Numbers it stole (from the deck of a shard it does not hold, see
            -- entity_steals): the cards go back and its steal row goes down; the shard is
            -- not taken (that would wait for its holder).
            IF g.stole = cardinality(g.xs) THEN
                DELETE FROM idmint.entity_steals t WHERE t.prefix = g.p AND t.shard = g.s AND t.xid = me;
            ELSE
                UPDATE idmint.entity_steals t SET n = t.n - cardinality(g.xs)
                WHERE t.prefix = g.p AND t.shard = g.s AND t.xid = me;
            END IF;
            INSERT INTO idmint.entity_free (prefix, shard, number) SELECT g.p, g.s, x FROM unnest(g.xs) AS x;
            CONTINUE;
        END IF;
        -- (Counted already if this transaction is no longer the holder: then the deleted
        -- rows and the remaining ones, but for those it stole, come out of `issued`, and
        -- the next count adds the remaining ones again; steal rows fold as in every take.)
        WITH z AS (
            SELECT y.prefix, y.shard, y.issued FROM idmint.entity_shards y
            WHERE y.prefix = g.p AND y.shard = g.s FOR NO KEY UPDATE
        ), d AS (
            DELETE FROM idmint.entity_steals t USING z
            WHERE t.prefix = z.prefix AND t.shard = z.shard
            RETURNING t.n, t.xid = me AS own
        ), f AS (
            SELECT coalesce(sum(d.n) FILTER (WHERE NOT d.own), 0)::integer AS others,
                   coalesce(sum(d.n) FILTER (WHERE d.own), 0)::integer AS own
            FROM d
        )
        UPDATE idmint.entity_shards y
        SET holder = me,
            issued = y.issued + f.others
                     - CASE WHEN y.holder IS DISTINCT FROM me
                            THEN idmint._entity_mine(g.p, g.s) + cardinality(g.xs) - f.own ELSE 0 END
        FROM z, f
        WHERE y.prefix = z.prefix AND y.shard = z.shard
        RETURNING y.deck INTO deck;
        IF deck THEN
            -- Back into the deck.
            INSERT INTO idmint.entity_free (prefix, shard, number)
            SELECT g.p, g.s, u.x FROM unnest(g.xs) AS u(x);
        END IF;
        setting := current_setting('idmint.entity_' || g.p, true);
        st := CASE WHEN setting IS NULL OR setting = '' THEN '{}' ELSE setting::integer[] END;
        j := array_position(ARRAY(SELECT st[i][1] FROM generate_subscripts(st, 1) AS i), g.s);
        IF j IS NOT NULL THEN
            st[j][3] := greatest(0, st[j][3] - cardinality(g.xs));
            setting := set_config('idmint.entity_' || g.p, st::text, true);
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION idmint._unissue_entity_numbers(integer[]) IS
    'Free again numbers this transaction issued (counts, decks and later calls as if never issued); others are ignored';


CREATE FUNCTION idmint.claim_entity_number(number text, entity text DEFAULT NULL) RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT idmint._claim_entity_number(number, CASE WHEN entity IS NOT NULL THEN idmint._entity_prefix(entity) END,
                                       'claim')
$$;
COMMENT ON FUNCTION idmint.claim_entity_number(number text, entity text) IS
    'Register a manually entered number (of the given type, if any) and return it. ID003 not 7 digits or other type, ID004 already issued, ID008 unregistered prefix';

CREATE FUNCTION idmint.claim_entity_number(number text, entity integer) RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT idmint._claim_entity_number(number, CASE WHEN entity IS NOT NULL THEN idmint._entity_prefix(entity) END,
                                       'claim')
$$;
COMMENT ON FUNCTION idmint.claim_entity_number(number text, entity integer) IS
    'claim_entity_number for a type given by its prefix';

-- Format check; `wanted` NULL with any_type false means "a type was asked for that does not exist".
CREATE FUNCTION idmint._valid_entity_number(number text, wanted integer, any_type boolean) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN number ~ '^[1-9][0-9]{6}$'
                THEN EXISTS (SELECT FROM idmint.entity_ranges r WHERE r.prefix = substr(number, 1, 1)::integer)
                     AND coalesce(any_type OR substr(number, 1, 1)::integer = wanted, false)
                ELSE false END
$$;
COMMENT ON FUNCTION idmint._valid_entity_number(text, integer, boolean) IS
    'True for 7 digits whose prefix is a registered type (and = wanted unless any_type); never raises';

CREATE FUNCTION idmint.is_valid_entity_number(number text, entity text DEFAULT NULL) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT idmint._valid_entity_number(number, idmint._find_entity(entity), entity IS NULL) $$;
COMMENT ON FUNCTION idmint.is_valid_entity_number(number text, entity text) IS
    'True when the text is 7 digits whose prefix is a registered type (and the given type, if any); issued or not does not matter. Never raises';

CREATE FUNCTION idmint.is_valid_entity_number(number text, entity integer) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT idmint._valid_entity_number(number, CASE WHEN entity BETWEEN 1 AND 9 THEN entity END, entity IS NULL)
$$;
COMMENT ON FUNCTION idmint.is_valid_entity_number(number text, entity integer) IS
    'is_valid_entity_number for a type given by its prefix; never raises';

CREATE VIEW idmint.entity_types AS
SELECT r.prefix, r.name FROM idmint.entity_ranges r;
COMMENT ON VIEW idmint.entity_types IS 'Registered entity types: prefix 1..9 (first digit of their numbers) and name';

-- Committed counts are the sum of the type's 200 shard counts and of its steal rows; a transaction also sees
-- the numbers it issued itself and that are not counted yet (as it sees its own rows),
-- counted from its rows.
CREATE VIEW idmint.entity_capacity AS
SELECT r.prefix,
       r.name,
       c.issued,
       r.capacity,
       r.capacity - c.issued AS free,
       round(c.issued::numeric / r.capacity, 6) AS utilization
FROM idmint.entity_ranges r
CROSS JOIN LATERAL (
    SELECT (coalesce(sum(x.issued), 0)
            -- (taken from decks of shards others held: see entity_steals; with the
            -- reader's own, which are in no shard it holds)
            + (SELECT coalesce(sum(t.n), 0) FROM idmint.entity_steals t WHERE t.prefix = r.prefix)
            -- (not yet counted: in shards it still holds)
            -- (the shard of e.number: idmint._entity_shards_of inlined, f6.r / 5)
            + (SELECT count(*)
               FROM idmint.entity_numbers e,
                    LATERAL (SELECT e.number % 1000000 / 1000 AS l, e.number % 1000 AS r) f0,
                    LATERAL (SELECT f0.r AS l, (f0.l + (hashint4extended(f0.r, r.shard_key[1]) & 1023)::integer) % 1000 AS r) f1,
                    LATERAL (SELECT f1.r AS l, (f1.l + (hashint4extended(f1.r, r.shard_key[2]) & 1023)::integer) % 1000 AS r) f2,
                    LATERAL (SELECT f2.r AS l, (f2.l + (hashint4extended(f2.r, r.shard_key[3]) & 1023)::integer) % 1000 AS r OFFSET 0) f3,
                    LATERAL (SELECT f3.r AS l, (f3.l + (hashint4extended(f3.r, r.shard_key[4]) & 1023)::integer) % 1000 AS r) f4,
                    LATERAL (SELECT f4.r AS l, (f4.l + (hashint4extended(f4.r, r.shard_key[5]) & 1023)::integer) % 1000 AS r) f5,
                    LATERAL (SELECT f5.r AS l, (f5.l + (hashint4extended(f5.r, r.shard_key[6]) & 1023)::integer) % 1000 AS r OFFSET 0) f6,
                    idmint.entity_shards h
               WHERE pg_current_xact_id_if_assigned() IS NOT NULL  -- (most readers: not even planned)
                 AND e.issued_xid = pg_current_xact_id_if_assigned()
                 AND e.number / 1000000 = r.prefix
                 AND h.prefix = r.prefix AND h.holder = e.issued_xid AND h.shard = f6.r / 5)
            -- (the reader's spares, not handed out: see _entity_spares_remove)
            - CASE WHEN pg_current_xact_id_if_assigned() IS NOT NULL
                   THEN coalesce(length(current_setting('idmint.entity_spare_' || r.prefix, true)), 0) / 7 ELSE 0 END
           )::integer AS issued  -- (see _entity_mine)
    FROM idmint.entity_shards x WHERE x.prefix = r.prefix
) c;
COMMENT ON VIEW idmint.entity_capacity IS
    'Per entity type: numbers issued, capacity (1 000 000), free and utilization (0..1); exact on committed state (plus the reader''s own uncommitted numbers)';

CREATE FUNCTION idmint.add_entity_type(prefix integer, name text) RETURNS idmint.entity_types
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    added idmint.entity_types;
BEGIN
    IF prefix IS NULL OR prefix NOT BETWEEN 1 AND 9 THEN
        PERFORM idmint._error('invalid_argument',
            format('entity prefix %s is out of range', coalesce(prefix::text, 'NULL')),
            'entity type prefixes are 1..9');
    ELSIF name IS NULL OR name = '' OR name ~ '^\s|\s$' OR name ~ '^[0-9]$' OR length(name) > 100 THEN
        PERFORM idmint._error('invalid_argument',
            format('invalid entity type name %s', coalesce(quote_literal(left(name, 100)), 'NULL')),
            'a type name is 1..100 characters without surrounding whitespace, and not a single digit');
    END IF;
    INSERT INTO idmint.entity_ranges AS r (prefix, name) VALUES (add_entity_type.prefix, add_entity_type.name)
    ON CONFLICT DO NOTHING
    RETURNING r.prefix, r.name INTO added;
    IF NOT FOUND THEN
        PERFORM idmint._error('already_taken',
            format('entity type %s %L exists already', prefix, name),
            'see idmint.entity_types',
            (SELECT string_agg(format('registered: %s %L', r.prefix, r.name), '; ')
             FROM idmint.entity_ranges r WHERE r.prefix = add_entity_type.prefix OR r.name = add_entity_type.name));
    END IF;
    INSERT INTO idmint.entity_shards (prefix, shard) SELECT add_entity_type.prefix, s FROM generate_series(0, 199) AS s;
    RETURN added;
END
$$;
COMMENT ON FUNCTION idmint.add_entity_type(integer, text) IS
    'Register an entity type: prefix 1..9 and a unique name. ID003 bad prefix or name, ID004 prefix or name taken';
