from django.urls import path

from apps.monitoring.apis import MetricSeriesApi, PriceApi, PriceListApi, UsageApi

urlpatterns = [
    path("tenants/<slug:slug>/metrics/", MetricSeriesApi.as_view(), name="metric-series"),
    path("tenants/<slug:slug>/usage/", UsageApi.as_view(), name="usage"),
    path("prices/", PriceListApi.as_view(), name="prices"),
    path("prices/<str:device_kind>/", PriceApi.as_view(), name="price"),
]
