using SEmigrate.TestSupport;
using SEmigrate.Workers.Trust;

namespace SEmigrate.Workers.Tests;

/// <summary>The operator's commands of the README: `operator init` makes the signing key once (0600) and
/// prints the setting hosts pin; `host enrol` vouches for a host's key from the identity its worker wrote,
/// and refuses an identity of another host; `host enrolled` lists them.</summary>
public class TrustCommandTests(PostgresFixture postgres) : IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task The_operator_makes_a_key_once_and_enrols_a_host_from_its_identity()
    {
        var dir = Directory.CreateTempSubdirectory("semigrate-trust-");
        try
        {
            var keyFile = Path.Combine(dir.FullName, "operator", "operator.key");
            var env = new Dictionary<string, string>(await ServicesScript.SettingsAsync())
            {
                ["SEMIGRATE__Postgres__Schema"] = postgres.Schema,
                ["SEMIGRATE__Trust__OperatorKeyFile"] = keyFile,
            };
            var init = await SemigrateProcess.RunAsync(env, "operator", "init");
            Assert.True(init.ExitCode == 0, init.Stderr);
            Assert.Matches("^SEMIGRATE__Trust__OperatorKey=[A-Za-z0-9+/]+=*$", init.Stdout.Trim());
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(keyFile));
            var again = await SemigrateProcess.RunAsync(env, "operator", "init");
            Assert.Equal(init.Stdout, again.Stdout); // the same key: made once
            Assert.Contains("was there already", again.Stderr, StringComparison.Ordinal);

            // What a worker of host h1 writes to its state folder at start.
            var state = Directory.CreateDirectory(Path.Combine(dir.FullName, "h1")).FullName;
            HostIdentity.Ensure(state, "h1").Dispose();
            var identity = Path.Combine(state, HostIdentity.FileName);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(state, "host.key")));

            var enrol = await SemigrateProcess.RunAsync(env, "host", "enrol", "h1", "--identity", identity);
            Assert.True(enrol.ExitCode == 0, enrol.Stderr);
            var print = Sealing.HostKeyPair.Fingerprint(HostIdentity.Read(identity).HostKey);
            Assert.Equal($"enrolled h1: key {print}", enrol.Stdout.Trim());
            var wrong = await SemigrateProcess.RunAsync(env, "host", "enrol", "h2", "--identity", identity);
            Assert.Equal(2, wrong.ExitCode);
            Assert.Contains("the identity is host h1's, not h2's", wrong.Stderr, StringComparison.Ordinal);
            var listed = await SemigrateProcess.RunAsync(env, "host", "enrolled");
            Assert.Matches($@"^h1\s+key {print}\s+enrolled ", listed.Stdout.Trim());

            // Without the operator's key nothing is enrolled, and the error says how to make one.
            env["SEMIGRATE__Trust__OperatorKeyFile"] = Path.Combine(dir.FullName, "nowhere", "operator.key");
            var keyless = await SemigrateProcess.RunAsync(env, "host", "enrol", "h1", "--identity", identity);
            Assert.Equal(2, keyless.ExitCode);
            Assert.Contains("`semigrate operator init` makes one", keyless.Stderr, StringComparison.Ordinal);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
