"""Console forms: shape and range checks only; every rule beyond that is the services'."""

from __future__ import annotations

from typing import Any

from django import forms

from apps.deployments.models import Deployment
from apps.tenants.models import Role, Scope
from apps.tenants.services import QUOTA_FIELDS


class ModelCreateForm(forms.Form):
    name = forms.CharField(max_length=63, help_text="lowercase letters, digits and dashes")
    description = forms.CharField(max_length=500, required=False)


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100)
    scopes = forms.MultipleChoiceField(choices=Scope.choices, widget=forms.CheckboxSelectMultiple)
    expires_in_days = forms.IntegerField(min_value=1, max_value=3650, required=False, help_text="empty: never")


class MemberAddForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class DeploymentForm(forms.Form):
    """Replicas, batching and scale-to-zero; traffic comes as one weight per version."""

    min_replicas = forms.IntegerField(min_value=0, max_value=1000, initial=1)
    max_replicas = forms.IntegerField(min_value=0, max_value=1000, initial=1)
    target_inflight_per_replica = forms.IntegerField(min_value=1, max_value=100_000, initial=8)
    scale_to_zero_after_s = forms.IntegerField(min_value=0, max_value=10**7, initial=0, help_text="0 keeps replicas")
    device_kind = forms.ChoiceField(choices=Deployment.DeviceKind.choices, initial="cpu")
    max_batch_size = forms.IntegerField(min_value=1, max_value=4096, required=False, help_text="empty: the default")
    max_queue_delay_us = forms.IntegerField(min_value=0, max_value=10_000_000, required=False)
    instance_count = forms.IntegerField(min_value=1, max_value=64, required=False)

    def __init__(self, *args: Any, versions: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.versions = versions
        for number in versions:
            self.fields[f"traffic_{number}"] = forms.IntegerField(
                min_value=0, max_value=100, initial=0, required=False, label=f"v{number} %"
            )

    def traffic(self) -> dict[str, int]:
        return {
            str(number): self.cleaned_data[f"traffic_{number}"]
            for number in self.versions
            if self.cleaned_data.get(f"traffic_{number}")
        }

    def batching(self) -> dict[str, int]:
        names = ("max_batch_size", "max_queue_delay_us", "instance_count")
        return {name: self.cleaned_data[name] for name in names if self.cleaned_data.get(name) is not None}


class CanaryForm(forms.Form):
    """Shift N % of the traffic to one version; the rest stays on the stable one."""

    version = forms.TypedChoiceField(coerce=int, choices=(), required=False, empty_value=None)
    percent = forms.IntegerField(min_value=0, max_value=100, initial=10)

    def __init__(self, *args: Any, versions: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["version"]
        assert isinstance(field, forms.TypedChoiceField)
        field.choices = [(number, f"v{number}") for number in versions]


class TenantCreateForm(forms.Form):
    slug = forms.CharField(max_length=63, help_text="lowercase letters, digits and dashes")
    name = forms.CharField(max_length=200)
    owner_username = forms.CharField(max_length=150, required=False, help_text="an existing user; empty: none yet")


class QuotaForm(forms.Form):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in QUOTA_FIELDS:
            self.fields[name] = forms.IntegerField(min_value=0, max_value=10**9, label=name.replace("_", " "))
