-- Idempotency keys are scoped per buyer, as the IETF Idempotency-Key draft
-- advises: a key is unique for the client that made it, not across all
-- clients. With a global key, two buyers whose clients happen to pick the
-- same key (both count from 1, say) collided: the second was refused as a
-- reuse. Now (user_id, key) names a row; the same buyer reusing a key for
-- another ticket is still refused (422).
ALTER TABLE idempotency_keys DROP CONSTRAINT IF EXISTS idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (user_id, key);
