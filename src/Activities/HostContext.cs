namespace SEmigrate.Activities;

/// <summary>The host an activity runs on: its name and the folder where it keeps its state
/// (the source's per-migration key and checkpoints, the main host's key pair and VM memory).</summary>
public sealed record HostContext(string Host, string StateDirectory)
{
    public string MigrationDirectory(Guid migrationId)
    {
        var dir = Path.Combine(StateDirectory, "migrations", migrationId.ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }
}
