namespace SEmigrate.Activities;

/// <summary>The host an activity runs on: its name and the folder where it keeps its state
/// (the source's per-migration key and checkpoints, the main host's key pair and VM memory), and at a
/// source the most its transfers may send together, in MB/s (0: no limit), like QEMU's max-bandwidth:
/// a migration must not starve the host's other traffic.</summary>
public sealed record HostContext(string Host, string StateDirectory, double MaxTransferMBps = 0)
{
    public string MigrationDirectory(Guid migrationId)
    {
        var dir = Path.Combine(StateDirectory, "migrations", migrationId.ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }
}
