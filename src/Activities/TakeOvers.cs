namespace SEmigrate.Activities;

/// <summary>A main host's word on each migration, kept on disk: it took the VM over, or it declined to
/// (its pages released before any switch-over), never both. A source continues a guest it handed over
/// only with this host's proof that it declined (see PagingActivities), so a guest never runs at both.</summary>
public sealed class TakeOvers(HostContext host)
{
    private static readonly Lock Gate = new();

    /// <summary>Marks the VM of <paramref name="migrationId"/> taken over here; false if this host declined it before.</summary>
    public bool TryTakeOver(Guid migrationId) => TryMark(migrationId, "taken-over", "declined");

    /// <summary>Marks the migration declined here; false if this host took its VM over before.</summary>
    public bool TryDecline(Guid migrationId) => TryMark(migrationId, "declined", "taken-over");

    public bool Declined(Guid migrationId) => File.Exists(Path.Combine(host.MigrationDirectory(migrationId), "declined"));

    private bool TryMark(Guid migrationId, string mark, string other)
    {
        var folder = host.MigrationDirectory(migrationId);
        lock (Gate)
        {
            if (File.Exists(Path.Combine(folder, other)))
            {
                return false;
            }
            File.WriteAllText(Path.Combine(folder, mark), "");
            return true;
        }
    }

    /// <summary>What a main host's proof that it declined a migration says (see Sealing.HostKeyPair.Vouch).</summary>
    public static string DeclinedStatement(Guid migrationId, Guid vm, string main) => $"semigrate declined v1|{migrationId:N}|{vm:N}|{main}";
}
