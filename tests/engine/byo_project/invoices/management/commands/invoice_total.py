"""Enqueue invoices.tasks.total, wait for a worker to run it and print the result as JSON."""

from __future__ import annotations

import json
from typing import Any

import conveyor
from django.core.management.base import BaseCommand, CommandParser

from invoices.tasks import total


class Command(BaseCommand):
    help = "Enqueue invoices.tasks.total(AMOUNTS), wait for its result and print it as JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("amounts", nargs="+", type=int)
        parser.add_argument("--timeout", type=float, default=60.0)

    def handle(self, *args: Any, **options: Any) -> None:
        result = total.enqueue(options["amounts"])
        done = conveyor.wait_result(result, timeout=options["timeout"])
        self.stdout.write(
            json.dumps(
                {
                    "id": done.id,
                    "status": done.status,
                    "return_value": done.return_value,
                    "queue": done.task.queue_name,
                    "worker_ids": list(done.worker_ids),
                }
            )
        )
