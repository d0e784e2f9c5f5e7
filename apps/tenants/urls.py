from django.urls import path

from apps.tenants import apis

urlpatterns = [
    path("tenants/", apis.TenantCollectionApi.as_view(), name="tenant-list"),
    path("tenants/<slug:slug>/", apis.TenantDetailApi.as_view(), name="tenant-detail"),
    path("tenants/<slug:slug>/members/", apis.MemberCollectionApi.as_view(), name="member-list"),
    path("tenants/<slug:slug>/members/<str:username>/", apis.MemberDetailApi.as_view(), name="member-detail"),
    path("tenants/<slug:slug>/api-keys/", apis.ApiKeyCollectionApi.as_view(), name="api-key-list"),
    path("tenants/<slug:slug>/api-keys/<str:prefix>/", apis.ApiKeyDetailApi.as_view(), name="api-key-detail"),
    path("tenants/<slug:slug>/quota/", apis.QuotaApi.as_view(), name="quota"),
    path("tenants/<slug:slug>/audit/", apis.AuditEventListApi.as_view(), name="audit-list"),
]
