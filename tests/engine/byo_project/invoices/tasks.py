"""The project's one task."""

from django.tasks import task


@task(queue_name="billing")
def total(amounts: list[int]) -> int:
    """Return the sum of an invoice's line amounts."""
    return sum(amounts)
