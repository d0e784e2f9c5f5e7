from django.contrib.auth import views as auth_views
from django.urls import path

from apps.console import staff_views, tenant_views, views

app_name = "console"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("t/<slug:slug>/dashboard/", views.tenant_dashboard, name="dashboard"),
    path("t/<slug:slug>/models/", tenant_views.models_page, name="models"),
    path("t/<slug:slug>/models/<str:name>/", tenant_views.model_page, name="model"),
    path("t/<slug:slug>/models/<str:name>/deployment/", tenant_views.deployment_page, name="deployment"),
    path("t/<slug:slug>/keys/", tenant_views.keys_page, name="keys"),
    path("t/<slug:slug>/keys/<str:prefix>/revoke/", tenant_views.key_revoke, name="key-revoke"),
    path("t/<slug:slug>/members/", tenant_views.members_page, name="members"),
    path("t/<slug:slug>/members/<str:username>/", tenant_views.member_change, name="member"),
    path("t/<slug:slug>/quota/", tenant_views.quota_page, name="quota"),
    path("t/<slug:slug>/usage/", tenant_views.usage_page, name="usage"),
    path("t/<slug:slug>/audit/", tenant_views.audit_page, name="audit"),
    path("staff/tenants/", staff_views.tenants_page, name="staff-tenants"),
    path("staff/tenants/<slug:slug>/", staff_views.tenant_page, name="staff-tenant"),
    path("staff/workers/<str:worker_id>/drain/", staff_views.worker_drain_action, name="worker-drain"),
    path("fleet/", views.fleet, name="fleet"),
]
