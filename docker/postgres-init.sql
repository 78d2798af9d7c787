-- Databases for the compose stack. Synapse needs the C collation.
CREATE USER synapse WITH PASSWORD 'letta-matrix-demo-postgres';
CREATE DATABASE synapse OWNER synapse ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
CREATE USER letta_matrix WITH PASSWORD 'letta-matrix-demo-postgres';
CREATE DATABASE letta_matrix OWNER letta_matrix;
CREATE DATABASE letta;
\connect letta
CREATE EXTENSION IF NOT EXISTS vector;
