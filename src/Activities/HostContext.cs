using Temporalio.Exceptions;

namespace SEmigrate.Activities;

/// <summary>The host an activity runs on: its name and the folder where it keeps its state (the
/// source's per-migration key and checkpoints, the main host's key pair), where a source keeps its
/// guests (<paramref name="GuestsDirectory"/>, default STATE/guests: a migration names a guest, never a
/// path), and at a source the most its transfers may send together, in MB/s (0: no limit), like QEMU's
/// max-bandwidth: a migration must not starve the host's other traffic. At a main host, <paramref name="Eviction"/>:
/// which of a running guest's chunks go when it passes its budget.</summary>
public sealed record HostContext(string Host, string StateDirectory, double MaxTransferMBps = 0, string? GuestsDirectory = null, Eviction Eviction = Eviction.TwoQueue)
{
    public string MigrationDirectory(Guid migrationId)
    {
        var dir = Path.Combine(StateDirectory, "migrations", migrationId.ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>The folder of this host's guest <paramref name="name"/>; a name that is not a plain
    /// folder name (a path, "..") is refused.</summary>
    public string GuestDirectory(string name)
    {
        if (name.Length == 0 || name[0] == '.' || name.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.')))
        {
            throw new ApplicationFailureException($"'{name}' is not a guest name (letters, digits, '-', '_', '.'; not a path)", nonRetryable: true);
        }
        return Path.Combine(GuestsDirectory ?? Path.Combine(StateDirectory, "guests"), name);
    }
}
