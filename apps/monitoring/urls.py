from django.urls import path

from apps.monitoring.apis import (
    AccuracyApi,
    DeviceSeriesApi,
    FeedbackApi,
    MetricSeriesApi,
    PredictionLogListApi,
    PriceApi,
    PriceListApi,
    UsageApi,
)

urlpatterns = [
    path("tenants/<slug:slug>/metrics/", MetricSeriesApi.as_view(), name="metric-series"),
    path("tenants/<slug:slug>/usage/", UsageApi.as_view(), name="usage"),
    path("tenants/<slug:slug>/models/<str:name>/feedback/", FeedbackApi.as_view(), name="feedback"),
    path("tenants/<slug:slug>/models/<str:name>/accuracy/", AccuracyApi.as_view(), name="accuracy"),
    path("tenants/<slug:slug>/models/<str:name>/predictions/", PredictionLogListApi.as_view(), name="predictions"),
    path("devices/series/", DeviceSeriesApi.as_view(), name="device-series"),
    path("prices/", PriceListApi.as_view(), name="prices"),
    path("prices/<str:device_kind>/", PriceApi.as_view(), name="price"),
]
