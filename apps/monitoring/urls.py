from django.urls import path

from apps.monitoring.apis import MetricSeriesApi

urlpatterns = [
    path("tenants/<slug:slug>/metrics/", MetricSeriesApi.as_view(), name="metric-series"),
]
