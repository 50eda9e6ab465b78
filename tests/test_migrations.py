"""Every migration of builds/ can run while the release before it still serves (README,
Upgrading): it only adds. A column the earlier release does not know gets a database default
(`db_default`) or is nullable, so that release's inserts still work; nothing it reads is removed,
renamed or made NOT NULL in the same release. tests/test_upgrade.py shows it for real, across
two commits; this check names the operation before a deployment finds it.
"""

import pytest
from django.db import migrations, models
from django.db.migrations.loader import MigrationLoader
from django.db.models.fields import NOT_PROVIDED

# Operations an earlier release's queries would break on, unless a migration names them here
# with the reason they are safe now (the contract half of an expand/contract change, in a
# release after the one whose code stopped using the column): {(app, migration): reason}.
CONTRACT_ALLOWED: dict[tuple[str, str], str] = {}

REMOVING = (migrations.RemoveField, migrations.RenameField, migrations.DeleteModel, migrations.RenameModel,
            migrations.AlterModelTable)


def _inserts_break(field) -> bool:
    """An INSERT that does not name this column fails."""
    return not (field.null or field.many_to_many or field.db_default is not NOT_PROVIDED)


def unsafe_operations(app: str = "builds") -> list[str]:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    found = []
    for (label, name), migration in sorted(loader.disk_migrations.items()):
        if label != app or (label, name) in CONTRACT_ALLOWED:
            continue
        before = loader.project_state((label, name), at_end=False)
        for operation in migration.operations:
            where = f"{label}.{name}: {operation.describe()}"
            model = getattr(operation, "model_name_lower", None) or getattr(operation, "name_lower", None)
            if (label, model) not in before.models:
                continue  # a table this migration creates: no earlier release uses it
            if isinstance(operation, REMOVING):
                found.append(f"{where} (the earlier release still reads it)")
            elif isinstance(operation, migrations.AddField) and _inserts_break(operation.field):
                found.append(f"{where} is NOT NULL without db_default (the earlier release's inserts fail)")
            elif isinstance(operation, migrations.AlterField):
                old = before.models[label, operation.model_name_lower].fields.get(operation.name)
                if old is not None and not _inserts_break(old) and _inserts_break(operation.field):
                    found.append(f"{where} makes it NOT NULL without db_default (the earlier release's inserts fail)")
                elif old is not None and old.db_column != operation.field.db_column:
                    found.append(f"{where} renames its column (the earlier release still reads it)")
    return found


def test_every_migration_is_safe_while_the_earlier_release_serves():
    assert unsafe_operations() == []


@pytest.mark.parametrize("field, unsafe", [
    (models.CharField(max_length=8, default="a"), True),  # Django's default is the model's, not the table's
    (models.CharField(max_length=8, db_default="a"), False),
    (models.CharField(max_length=8, null=True), False),
])
def test_the_check_knows_a_not_null_column_without_a_database_default(field, unsafe):
    assert _inserts_break(field) is unsafe
