"""One view that does what a page of a small site does: reads its URL
arguments and query string, builds rows, formats dates and money, and
renders them through a template with inheritance-free loops and filters."""

import datetime
from decimal import Decimal

from django.shortcuts import render
from django.utils import timezone


def orders(request, customer):
    page = int(request.GET.get("page", "1"))
    start = timezone.now() - datetime.timedelta(days=30)
    rows = [
        {
            "number": customer * 1000 + page * 50 + i,
            "placed": start + datetime.timedelta(hours=7 * i),
            "items": (i * 7) % 5 + 1,
            "total": Decimal(i * 1234 % 9999) / 100,
            "status": ("shipped", "pending", "cancelled")[i % 3],
        }
        for i in range(50)
    ]
    return render(
        request,
        "orders.html",
        {
            "customer": customer,
            "page": page,
            "rows": rows,
            "total": sum(r["total"] for r in rows),
        },
    )
