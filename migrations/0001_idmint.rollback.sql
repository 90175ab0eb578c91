-- Roll back idmint 0.1.0. The role idmint_user is cluster-wide and may serve other
-- databases, so it is left in place.
DROP SCHEMA IF EXISTS idmint CASCADE;
