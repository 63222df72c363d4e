from django.urls import path

from benchsite import views

urlpatterns = [
    path("orders/<int:customer>/", views.orders, name="orders"),
]
