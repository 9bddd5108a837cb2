"""The peer for bench/run: the /message handler a competent Plivo user writes from the SDK docs.

What the service is measured against, besides bare Flask: the same job done plainly, with
the tools Plivo's docs point at. Per request: the SDK's V3 signature check (403 when it
fails), the first word of the text looked up in a dict of keywords (the bench's rules file
read once: its 1,000 keywords and `hours`), the reply built with the SDK's plivoxml, and
ONE transaction that records the message by its MessageUUID (a retry finds it and gets
the stored reply; nothing is written twice), keeps a STOP table (STOP adds the sender,
START removes it, an opted-out sender gets no reply) and records the reply.

SQLite through the stdlib sqlite3 (WAL, synchronous=NORMAL as the service sets it, a busy
timeout, one connection per thread, BEGIN IMMEDIATE since it reads then writes);
PostgreSQL through psycopg 3 and psycopg_pool. The database is PEER_DATABASE_URL, not
DATABASE_URL: the peer runs under the service's gunicorn.conf.py, whose master migrates
DATABASE_URL to the service's schema before the workers start. Each worker creates the
tables it needs (IF NOT EXISTS, under a lock, so two workers starting at once do not trip).
"""

import os
import sqlite3
import threading
from contextlib import contextmanager

import yaml
from flask import Flask, Response, request
from plivo import plivoxml, utils

AUTH_TOKEN = os.environ["PLIVO_AUTH_TOKEN"]
DATABASE_URL = os.environ["PEER_DATABASE_URL"]  # sqlite:////path/file.sqlite3 or postgresql://...
POSTGRES = DATABASE_URL.startswith(("postgresql://", "postgres://"))
THREADS = int(os.environ.get("GUNICORN_THREADS", "8"))

STOP = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"}
START = {"START", "UNSTOP", "YES"}
STOPPED = "You are unsubscribed. Reply START to resubscribe."
STARTED = "You are resubscribed. Reply STOP to unsubscribe."
DEFAULT = "Thanks! A person will answer soon."

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS messages (uuid TEXT PRIMARY KEY, sender TEXT NOT NULL, "
    "recipient TEXT NOT NULL, text TEXT NOT NULL, received_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)",
    "CREATE TABLE IF NOT EXISTS replies (message_uuid TEXT PRIMARY KEY REFERENCES messages (uuid), "
    "text TEXT NOT NULL, sent_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)",
    "CREATE TABLE IF NOT EXISTS opt_outs (number TEXT PRIMARY KEY, since TIMESTAMP DEFAULT CURRENT_TIMESTAMP)",
]
P = "%s" if POSTGRES else "?"  # the drivers' placeholders
INSERT_MESSAGE = (f"INSERT INTO messages (uuid, sender, recipient, text) VALUES ({P}, {P}, {P}, {P}) "
                  "ON CONFLICT (uuid) DO NOTHING")
STORED_REPLY = f"SELECT text FROM replies WHERE message_uuid = {P}"
OPTED_OUT = f"SELECT 1 FROM opt_outs WHERE number = {P}"
OPT_OUT = f"INSERT INTO opt_outs (number) VALUES ({P}) ON CONFLICT (number) DO NOTHING"
OPT_IN = f"DELETE FROM opt_outs WHERE number = {P}"
INSERT_REPLY = f"INSERT INTO replies (message_uuid, text) VALUES ({P}, {P})"


def load_keywords(path):
    """keyword -> reply: the keyword rules of the bench's rules file, as the dict a user keeps."""
    with open(path, encoding="utf-8") as f:
        rules = yaml.safe_load(f)["rules"]
    keywords = {}
    for rule in rules:
        words = (rule.get("when") or {}).get("keyword", [])
        for word in [words] if isinstance(words, str) else words:
            keywords.setdefault(word.lower(), rule["reply"])
    return keywords


KEYWORDS = load_keywords(os.environ["RULES_PATH"])

if POSTGRES:
    import psycopg
    from psycopg_pool import ConnectionPool

    with psycopg.connect(DATABASE_URL) as conn:  # commits on leaving
        conn.execute("SELECT pg_advisory_xact_lock(14)")  # concurrent CREATE IF NOT EXISTS can collide
        for statement in SCHEMA:
            conn.execute(statement)
    pool = ConnectionPool(DATABASE_URL, min_size=THREADS, max_size=THREADS, open=True)

    def transaction():
        return pool.connection()  # commits when the block ends, rolls back on an exception
else:
    PATH = DATABASE_URL.removeprefix("sqlite:///")
    local = threading.local()

    def connect():
        conn = sqlite3.connect(PATH, timeout=5, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextmanager
    def transaction():
        if not hasattr(local, "conn"):
            local.conn = connect()
        conn = local.conn
        conn.execute("BEGIN IMMEDIATE")  # the write lock now: a deferred reader could not upgrade
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    with transaction() as conn:
        for statement in SCHEMA:
            conn.execute(statement)


def record(uuid, sender, recipient, text):
    """Record the message and decide its reply in one transaction; a retry gets the stored reply."""
    words = text.split()
    word = words[0].strip(".,!?").upper() if words else ""
    with transaction() as conn:
        if conn.execute(INSERT_MESSAGE, (uuid, sender, recipient, text)).rowcount == 0:
            row = conn.execute(STORED_REPLY, (uuid,)).fetchone()
            return row[0] if row else None
        if word in STOP:
            conn.execute(OPT_OUT, (sender,))
            reply = STOPPED
        elif word in START:
            conn.execute(OPT_IN, (sender,))
            reply = STARTED
        elif conn.execute(OPTED_OUT, (sender,)).fetchone():
            return None
        else:
            reply = KEYWORDS.get(word.lower(), DEFAULT)
        conn.execute(INSERT_REPLY, (uuid, reply))
        return reply


app = Flask(__name__)


@app.route("/message", methods=["POST"])
def message():
    signature = request.headers.get("X-Plivo-Signature-V3")
    nonce = request.headers.get("X-Plivo-Signature-V3-Nonce")
    if not signature or not nonce or not utils.validate_v3_signature(
            request.method, request.url, nonce, AUTH_TOKEN, signature, request.form.to_dict()):
        return Response("invalid signature", status=403)
    sender, recipient = request.form["From"], request.form["To"]
    reply = record(request.form["MessageUUID"], sender, recipient, request.form.get("Text", ""))
    response = plivoxml.ResponseElement()
    if reply is not None:
        response.add(plivoxml.MessageElement(reply, src=recipient, dst=sender, type="sms"))
    return Response(response.to_string(), mimetype="application/xml")
