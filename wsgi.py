"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`, `flask --app wsgi ...`.

Whether this process serves is decided here, once (app/serving.py: `role`): a gunicorn
worker serves, and gunicorn.conf.py's post_worker_init starts its background work; `flask
run` serves too, so the schema is brought up to date and the background work started here;
any other `flask` command (rules check, messages, sign, ...) gets an app that serves nothing.
"""

import config
from app import create_app
from app.serving import COMMAND, FLASK_RUN, SERVE, role, serve_from_flask_run

ROLE = role()
try:
    app = create_app(serving=ROLE != COMMAND)
    if ROLE == FLASK_RUN:
        serve_from_flask_run(app)
except config.ConfigError as exc:
    if ROLE == SERVE:
        raise  # gunicorn's master checked the settings before forking: this one is a surprise
    raise SystemExit(f"error: {exc}") from None  # the `flask` command: one line, exit 1
